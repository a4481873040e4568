//! Config history: every change to a stage's configuration, capacity, configs or hosts is
//! recorded (Teletraan's `config_history`), newest first on read, at most
//! [`MAX_HISTORY_PER_STAGE`] entries per stage (the oldest go first).

use proto::beans::ConfigHistoryBean;
use proto::ids::{ChangeId, EnvId};

use super::{Key, State};

/// Most history entries kept per stage.
pub const MAX_HISTORY_PER_STAGE: usize = 1000;
/// Longest recorded change, in characters (Teletraan's column holds 8192).
pub const MAX_CHANGE_CHARS: usize = 8192;

impl State {
    /// Records a change. Ids come from a replicated sequence, so every replica agrees.
    pub(super) fn record_history(
        &mut self,
        now: i64,
        env: &EnvId,
        change_type: &str,
        operator: &str,
        change: String,
    ) {
        self.history_seq += 1;
        let seq = self.history_seq;
        let mut change = change;
        if change.chars().count() > MAX_CHANGE_CHARS {
            change = change.chars().take(MAX_CHANGE_CHARS).collect();
        }
        let bean = ConfigHistoryBean {
            id: Some(env.clone()),
            change_id: Some(ChangeId::new(format!("{seq:016x}"))),
            create_time: Some(now),
            operator: Some(operator.to_string()),
            change_type: Some(change_type.to_string()),
            config_change: Some(change),
        };
        self.history.insert((env.clone(), seq), bean);
        self.dirty.insert(Key::History(env.clone(), seq));
        self.dirty.insert(Key::HistorySeq);
        let lo = (env.clone(), 0u64);
        let count = self.history.range(lo.clone()..).take_while(|((e, _), _)| e == env).count();
        if count > MAX_HISTORY_PER_STAGE {
            let oldest: Vec<u64> = self
                .history
                .range(lo..)
                .take_while(|((e, _), _)| e == env)
                .take(count - MAX_HISTORY_PER_STAGE)
                .map(|((_, s), _)| *s)
                .collect();
            for s in oldest {
                self.history.remove(&(env.clone(), s));
                self.dirty.insert(Key::History(env.clone(), s));
            }
        }
    }

    /// A stage's history, newest first.
    pub fn history_of(&self, env: &EnvId) -> impl Iterator<Item = &ConfigHistoryBean> {
        let lo = (env.clone(), 0u64);
        let hi = (env.clone(), u64::MAX);
        self.history.range(lo..=hi).rev().map(|(_, b)| b)
    }
}
