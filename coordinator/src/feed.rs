//! Wake-ups for long-polled pings: after each apply, the stages whose changes may give some
//! waiting host a goal (a new deploy, a host action, a config change) are announced here; a
//! held ping waits only on its own host's stages.
//!
//! Freed parallelism slots are different: waking every host queued on a stage for each freed
//! slot would make hundreds of hosts race for one slot (and each race is a Raft proposal). Hosts
//! that wait for a slot queue per stage, first come first served, and a freed slot wakes one.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use futures::FutureExt;
use proto::ids::EnvId;
use tokio::sync::watch;

/// What one or more applies changed, as far as held pings care.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Stages with a change every waiting host should see.
    pub stages: BTreeSet<EnvId>,
    /// A change that may concern any host (capacity moved, snapshot installed).
    pub everyone: bool,
    /// Parallelism slots freed, per stage.
    pub freed_slots: BTreeMap<EnvId, u32>,
    /// Tallies for metrics, not for held pings: hosts admitted to a deploy (a slot taken) and
    /// slot holders whose lease expired, per stage name.
    pub admitted: BTreeMap<StageName, u32>,
    pub leases_expired: BTreeMap<StageName, u32>,
}

/// A stage by name: (env, stage).
pub type StageName = (String, String);

/// Fan-out of "stage changed" events to held pings.
pub struct ChangeFeed {
    envs: Mutex<HashMap<EnvId, watch::Sender<u64>>>,
    /// Changes that may concern any host (capacity moved).
    everyone: watch::Sender<u64>,
    /// Hosts waiting for a slot, per stage, in arrival order.
    slot_waiters: Mutex<HashMap<EnvId, VecDeque<tokio::sync::oneshot::Sender<()>>>>,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        Self {
            envs: Mutex::new(HashMap::new()),
            everyone: watch::channel(0).0,
            slot_waiters: Mutex::new(HashMap::new()),
        }
    }
}

/// Receivers for the stages one held ping cares about.
pub struct Subscription {
    receivers: Vec<watch::Receiver<u64>>,
    slot: Option<tokio::sync::oneshot::Receiver<()>>,
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
        Subscription { receivers, slot: None }
    }

    /// Also queues the subscriber for the next free slot of `env`.
    pub fn queue_for_slot(&self, sub: &mut Subscription, env: &EnvId) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.slot_waiters.lock().expect("feed lock").entry(env.clone()).or_default().push_back(tx);
        sub.slot = Some(rx);
    }

    /// Announces changes made by one or more applies.
    pub fn notify(&self, changes: Changes) {
        if changes.everyone {
            self.everyone.send_modify(|v| *v += 1);
        }
        if !changes.stages.is_empty() {
            let map = self.envs.lock().expect("feed lock");
            for e in &changes.stages {
                if let Some(tx) = map.get(e) {
                    tx.send_modify(|v| *v += 1);
                }
            }
        }
        if !changes.freed_slots.is_empty() {
            let mut queues = self.slot_waiters.lock().expect("feed lock");
            for (env, mut n) in changes.freed_slots {
                let Some(queue) = queues.get_mut(&env) else { continue };
                // Waiters that gave up (their ping answered or the agent left) are skipped.
                while n > 0 {
                    let Some(tx) = queue.pop_front() else { break };
                    if tx.send(()).is_ok() {
                        n -= 1;
                    }
                }
            }
        }
    }
}

impl Subscription {
    /// Resolves at the first change announced after the subscription was made, or when this
    /// subscriber's turn for a freed slot comes.
    pub async fn changed(mut self) {
        let mut waits: Vec<futures::future::BoxFuture<'_, ()>> =
            self.receivers.iter_mut().map(|rx| rx.changed().map(|_| ()).boxed()).collect();
        if let Some(slot) = self.slot.take() {
            waits.push(
                async move {
                    if slot.await.is_err() {
                        // Dropped without a turn (never happens while the feed lives): wait on.
                        std::future::pending::<()>().await;
                    }
                }
                .boxed(),
            );
        }
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
        feed.notify(Changes { stages: BTreeSet::from([b.clone()]), ..Default::default() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "another stage's change does not wake it");
        feed.notify(Changes { stages: BTreeSet::from([a.clone()]), ..Default::default() });
        tokio::time::timeout(Duration::from_secs(1), waiting).await.unwrap().unwrap();
        let sub = feed.subscribe([&b]);
        feed.notify(Changes { everyone: true, ..Default::default() });
        tokio::time::timeout(Duration::from_secs(1), sub.changed()).await.unwrap();
    }

    #[tokio::test]
    async fn a_freed_slot_wakes_one_waiter_in_arrival_order() {
        let feed = ChangeFeed::default();
        let a = EnvId::new("a");
        let mut waiters = Vec::new();
        for _ in 0..3 {
            let mut sub = feed.subscribe([&a]);
            feed.queue_for_slot(&mut sub, &a);
            waiters.push(tokio::spawn(sub.changed()));
        }
        feed.notify(Changes {
            freed_slots: BTreeMap::from([(a.clone(), 1)]),
            ..Default::default()
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let done: Vec<bool> = waiters.iter().map(|w| w.is_finished()).collect();
        assert_eq!(done, vec![true, false, false], "only the first in line wakes");
        feed.notify(Changes {
            freed_slots: BTreeMap::from([(a.clone(), 5)]),
            ..Default::default()
        });
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(1), w).await.unwrap().unwrap();
        }
    }
}
