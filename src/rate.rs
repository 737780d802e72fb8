//! Budgets of events per key per minute (the mail-link pages per client address, sign-ups per
//! address, `core.email` per project), shared by every worker.
//!
//! Counted in a fixed table of counters rather than one entry per key (a count-min sketch):
//! each key adds to one counter in each of two rows, picked by a hash with a random seed, and
//! its count is the smaller of the two. Memory is fixed whatever the number of keys, and no
//! key is ever refused because the table is full: a flood of strangers adds a little to many
//! counters, and a newcomer is refused only when both of its counters were each filled to the
//! limit by others, which takes about `limit × COUNTERS` events in one minute. A count is never
//! less than the key's own, so a key's budget is never more than its limit.

use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counters per row.
const COUNTERS: usize = 16 * 1024;
const WINDOW: Duration = Duration::from_secs(60);

/// One budget; its keys are whatever its callers hash (an address, a project, a pair), borrowed,
/// so counting allocates nothing.
pub struct PerMinute {
    /// 0: no limit.
    limit: u32,
    seeds: [RandomState; 2],
    state: Mutex<Window>,
}

struct Window {
    started: Instant,
    rows: Box<[[u32; COUNTERS]; 2]>,
}

impl PerMinute {
    pub fn new(limit: u32) -> Self {
        PerMinute {
            limit,
            seeds: [RandomState::new(), RandomState::new()],
            state: Mutex::new(Window {
                started: Instant::now(),
                rows: Box::new([[0; COUNTERS]; 2]),
            }),
        }
    }

    /// Counts one event for `key`; whether it is within the key's budget. A refused event is
    /// not counted, so a key that keeps trying adds nothing to its neighbours' counters.
    pub fn allow(&self, key: impl Hash) -> bool {
        if self.limit == 0 {
            return true;
        }
        let slots = [0, 1].map(|row| self.seeds[row].hash_one(&key) as usize % COUNTERS);
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(state.started) >= WINDOW {
            state.started = now;
            state.rows.iter_mut().for_each(|row| row.fill(0));
        }
        let count = slots
            .iter()
            .enumerate()
            .map(|(row, &slot)| state.rows[row][slot])
            .min()
            .unwrap_or(0);
        if count >= self.limit {
            return false;
        }
        for (row, &slot) in slots.iter().enumerate() {
            let counter = &mut state.rows[row][slot];
            *counter = counter.saturating_add(1);
        }
        true
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

    /// The probe's attack: one request from each of 10,050 addresses, then a new visitor.
    #[test]
    fn no_flood_of_strangers_refuses_a_newcomer() {
        let rate = PerMinute::new(5);
        for key in 0..10_050u32 {
            assert!(rate.allow(key));
        }
        let newcomers = (1_000_000..1_000_100u32)
            .filter(|&key| rate.allow(key))
            .count();
        assert_eq!(newcomers, 100, "every newcomer is served");
        // Strangers who each use their whole budget fill few counters to the limit.
        let rate = PerMinute::new(5);
        for key in 0..2_000u32 {
            while rate.allow(key) {}
        }
        let served = (1_000_000..1_001_000u32)
            .filter(|&key| rate.allow(key))
            .count();
        assert!(served >= 950, "{served} of 1000 newcomers served");
    }

    #[test]
    fn a_key_never_gets_more_than_its_limit() {
        let rate = PerMinute::new(7);
        for key in 0..5_000u32 {
            let allowed = (0..20).filter(|_| rate.allow(key)).count();
            assert!(allowed <= 7);
        }
    }
}
