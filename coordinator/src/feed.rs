//! Wake-ups for long-polled pings: after each apply, the stages whose changes may give some
//! waiting host a goal (a new deploy, a freed slot, a host action, a config change) are
//! announced here; a held ping waits only on its own host's stages.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use futures::FutureExt;
use proto::ids::EnvId;
use tokio::sync::watch;

/// Fan-out of "stage changed" events to held pings.
pub struct ChangeFeed {
    envs: Mutex<HashMap<EnvId, watch::Sender<u64>>>,
    /// Changes that may concern any host (capacity moved).
    everyone: watch::Sender<u64>,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        Self { envs: Mutex::new(HashMap::new()), everyone: watch::channel(0).0 }
    }
}

/// Receivers for the stages one held ping cares about.
pub struct Subscription {
    receivers: Vec<watch::Receiver<u64>>,
}

impl ChangeFeed {
    /// Subscribes to `envs` and to global changes. Subscribe before reading the state the ping
    /// is planned on, so that no change between the two is missed.
    pub fn subscribe<'a>(&self, envs: impl IntoIterator<Item = &'a EnvId>) -> Subscription {
        let mut map = self.envs.lock().expect("feed lock");
        let mut receivers: Vec<watch::Receiver<u64>> = envs
            .into_iter()
            .map(|e| map.entry(e.clone()).or_insert_with(|| watch::channel(0).0).subscribe())
            .collect();
        receivers.push(self.everyone.subscribe());
        Subscription { receivers }
    }

    /// Announces changes made by one apply.
    pub fn notify(&self, envs: &BTreeSet<EnvId>, everyone: bool) {
        if everyone {
            self.everyone.send_modify(|v| *v += 1);
        }
        if envs.is_empty() {
            return;
        }
        let map = self.envs.lock().expect("feed lock");
        for e in envs {
            if let Some(tx) = map.get(e) {
                tx.send_modify(|v| *v += 1);
            }
        }
    }
}

impl Subscription {
    /// Resolves at the first change announced after the subscription was made.
    pub async fn changed(mut self) {
        let waits = self.receivers.iter_mut().map(|rx| rx.changed().boxed());
        let _ = futures::future::select_all(waits).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_held_ping_wakes_only_for_its_stages() {
        let feed = ChangeFeed::default();
        let (a, b) = (EnvId::new("a"), EnvId::new("b"));
        let sub = feed.subscribe([&a]);
        let waiting = tokio::spawn(sub.changed());
        feed.notify(&BTreeSet::from([b.clone()]), false);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "another stage's change does not wake it");
        feed.notify(&BTreeSet::from([a.clone()]), false);
        tokio::time::timeout(Duration::from_secs(1), waiting).await.unwrap().unwrap();
        let sub = feed.subscribe([&b]);
        feed.notify(&BTreeSet::new(), true);
        tokio::time::timeout(Duration::from_secs(1), sub.changed()).await.unwrap();
    }
}
