//! `RateLimiter`: at most N actions per key per second (or per minute),
//! a keyed GCRA limiter from `governor`: a burst of N, then one action every
//! 1/N of the period.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota};

#[derive(Debug)]
pub struct RateLimiter {
    /// `None` when the limit is 0: every action is refused.
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

/// Keys kept before those back at a full burst are swept.
const SWEEP_AT: usize = 10_000;

impl RateLimiter {
    /// At most `per_second` actions per key per second.
    pub fn new(per_second: u32) -> Self {
        Self::with_quota(NonZeroU32::new(per_second).map(Quota::per_second))
    }

    /// At most `per_minute` actions per key per minute.
    pub fn per_minute(per_minute: u32) -> Self {
        Self::with_quota(NonZeroU32::new(per_minute).map(Quota::per_minute))
    }

    fn with_quota(quota: Option<Quota>) -> Self {
        RateLimiter {
            limiter: quota.map(governor::RateLimiter::keyed),
        }
    }

    /// Counts one action for `key`; false if it is over the limit.
    pub fn allow(&self, key: &str) -> bool {
        let Some(limiter) = &self.limiter else {
            return false;
        };
        if limiter.len() >= SWEEP_AT {
            // Keys whose state equals a fresh one carry no information.
            limiter.retain_recent();
        }
        limiter.check_key(&key.to_owned()).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_key() {
        let limiter = RateLimiter::per_minute(2);
        assert!(limiter.allow("a"));
        assert!(limiter.allow("a"));
        assert!(!limiter.allow("a"));
        assert!(limiter.allow("b"), "other keys unaffected");
        assert!(!limiter.allow("a"), "still within the minute");
    }

    #[test]
    fn a_second_later_there_is_room_again() {
        let limiter = RateLimiter::new(2);
        assert!(limiter.allow("a"));
        assert!(limiter.allow("a"));
        assert!(!limiter.allow("a"));
        std::thread::sleep(std::time::Duration::from_millis(600));
        assert!(limiter.allow("a"), "one replenished after 1/2 s");
    }

    #[test]
    fn a_zero_limit_refuses_everything() {
        assert!(!RateLimiter::new(0).allow("a"));
        assert!(!RateLimiter::per_minute(0).allow("a"));
    }
}
