//! Budgets of events per key per minute (the mail-link pages per client address, `core.email`
//! per project), shared by every worker. Memory is bounded: past [`MAX_KEYS`] keys, windows that
//! ended are swept out (at most once a second), and while the table is still full a key it does
//! not know gets no budget, so a flood of new keys can neither grow it nor make every call sweep.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys remembered at most.
pub const MAX_KEYS: usize = 10_000;

const WINDOW: Duration = Duration::from_secs(60);
const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub struct PerMinute<K> {
    /// 0: no limit.
    limit: u32,
    state: Mutex<Windows<K>>,
}

struct Windows<K> {
    started: HashMap<K, (Instant, u32)>,
    swept: Option<Instant>,
}

impl<K: Hash + Eq> PerMinute<K> {
    pub fn new(limit: u32) -> Self {
        PerMinute {
            limit,
            state: Mutex::new(Windows {
                started: HashMap::new(),
                swept: None,
            }),
        }
    }

    /// Counts one event for `key`; whether it is within the key's budget.
    pub fn allow(&self, key: K) -> bool {
        if self.limit == 0 {
            return true;
        }
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Windows { started, swept } = &mut *state;
        if started.len() >= MAX_KEYS && !started.contains_key(&key) {
            if swept.is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY) {
                started.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
                *swept = Some(now);
            }
            if started.len() >= MAX_KEYS {
                return false;
            }
        }
        let (start, count) = started.entry(key).or_insert((now, 0));
        if now.duration_since(*start) >= WINDOW {
            *start = now;
            *count = 0;
        }
        *count = count.saturating_add(1);
        *count <= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_gets_its_budget() {
        let rate = PerMinute::new(3);
        assert!((0..3).all(|_| rate.allow("a")));
        assert!(!rate.allow("a"));
        assert!(rate.allow("b"), "another key has its own budget");
        assert!((0..100).all(|_| PerMinute::new(0).allow("a")));
    }

    #[test]
    fn a_flood_of_new_keys_stays_bounded() {
        let rate = PerMinute::new(5);
        for key in 0..MAX_KEYS {
            assert!(rate.allow(key));
        }
        assert!(rate.allow(0), "known keys keep their budget");
        assert!(!rate.allow(MAX_KEYS + 1), "no room for a new key");
        assert_eq!(rate.state.lock().unwrap().started.len(), MAX_KEYS);
    }
}
