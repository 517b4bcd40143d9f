//! `Countdowns`: the countdown timers running now (a metric: a cancelled
//! countdown stops its timer).

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

/// Countdowns running now (a metric: a cancelled one stops its timer).
#[derive(Debug, Default)]
pub struct Countdowns(AtomicUsize);

impl Countdowns {
    pub fn running(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts one running countdown; dropped with its stream.
pub struct Running(Arc<Countdowns>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Countdowns {
    /// Counts a countdown as running until the returned value is dropped.
    pub fn start(self: &Arc<Self>) -> Running {
        self.0.fetch_add(1, Ordering::Relaxed);
        Running(self.clone())
    }
}
