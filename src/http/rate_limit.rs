//! `RateLimiter`: at most N actions per key per second (fixed windows).

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::Instant,
};

#[derive(Debug)]
pub struct RateLimiter {
    per_second: u32,
    started: Instant,
    /// key → (window second, actions in it).
    windows: Mutex<HashMap<String, (u64, u32)>>,
}

/// Keys kept before old windows are swept.
const SWEEP_AT: usize = 10_000;

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        RateLimiter {
            per_second,
            started: Instant::now(),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one action for `key`; false if it is over the limit.
    pub fn allow(&self, key: &str) -> bool {
        self.allow_at(key, self.started.elapsed().as_secs())
    }

    fn allow_at(&self, key: &str, second: u64) -> bool {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() >= SWEEP_AT {
            windows.retain(|_, (window, _)| *window == second);
        }
        let entry = windows.entry(key.to_owned()).or_insert((second, 0));
        if entry.0 != second {
            *entry = (second, 0);
        }
        entry.1 += 1;
        entry.1 <= self.per_second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_key_per_second() {
        let limiter = RateLimiter::new(2);
        assert!(limiter.allow_at("a", 0));
        assert!(limiter.allow_at("a", 0));
        assert!(!limiter.allow_at("a", 0));
        assert!(limiter.allow_at("b", 0), "other keys unaffected");
        assert!(limiter.allow_at("a", 1), "a new second");
    }
}
