//! Failed-login throttling: after too many failed logins for one account name within a window,
//! further attempts are refused without checking the password, until the window has passed.
//! Names that do not exist are counted the same way, so the refusal reveals nothing.
//!
//! Best effort and per process (several servers behind a balancer each count on their own):
//! it bounds password guessing and the hashing work an attacker can make us do.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Failed attempts allowed per account name and window.
const MAX_FAILURES: u32 = 10;
const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Names tracked at once; beyond it, expired entries are dropped, then the oldest.
const MAX_TRACKED: usize = 100_000;

static THROTTLE: LazyLock<Mutex<HashMap<String, Failures>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    since: Instant,
}

fn key(scope: &str, login: &str) -> String {
    format!("{scope}\u{0}{}", login.to_lowercase())
}

/// Whether `login` in `scope` may try a password now.
pub fn allowed(scope: &str, login: &str) -> bool {
    let map = THROTTLE.lock().unwrap_or_else(|e| e.into_inner());
    match map.get(&key(scope, login)) {
        Some(f) if f.since.elapsed() < WINDOW => f.count < MAX_FAILURES,
        _ => true,
    }
}

/// Records a failed attempt.
pub fn failed(scope: &str, login: &str) {
    let mut map = THROTTLE.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= MAX_TRACKED {
        map.retain(|_, f| f.since.elapsed() < WINDOW);
        if map.len() >= MAX_TRACKED
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, f)| f.since)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
    }
    let entry = map.entry(key(scope, login)).or_insert(Failures {
        count: 0,
        since: Instant::now(),
    });
    if entry.since.elapsed() >= WINDOW {
        *entry = Failures {
            count: 0,
            since: Instant::now(),
        };
    }
    entry.count += 1;
}

/// A successful login clears the account's failures.
pub fn succeeded(scope: &str, login: &str) {
    let mut map = THROTTLE.lock().unwrap_or_else(|e| e.into_inner());
    map.remove(&key(scope, login));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_failures_lock_the_name_and_success_clears_it() {
        for _ in 0..MAX_FAILURES {
            assert!(allowed("s", "Locked"));
            failed("s", "Locked");
        }
        assert!(!allowed("s", "locked"), "names compare case-insensitively");
        assert!(allowed("other-scope", "locked"));
        assert!(allowed("s", "someone-else"));
        succeeded("s", "LOCKED");
        assert!(allowed("s", "locked"));
    }
}
