//! `Traffic`: requests this node served, and their rate (for the
//! dashboard).

use std::sync::atomic::{AtomicU64, Ordering};

/// Requests served by this node (HTTP queries and WebSocket messages) and
/// their rate over the last second.
#[derive(Debug, Default)]
pub struct Traffic {
    total: AtomicU64,
    /// Total at the last tick.
    ticked: AtomicU64,
    /// Requests in the last second, as f64 bits.
    rate: AtomicU64,
}

impl Traffic {
    pub fn count(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// Called about once a second (by the presence task): fixes the rate.
    pub fn tick(&self, seconds: f64) {
        let total = self.total.load(Ordering::Relaxed);
        let before = self.ticked.swap(total, Ordering::Relaxed);
        let rate = (total - before) as f64 / seconds.max(1e-3);
        self.rate
            .store(((rate * 10.0).round() / 10.0).to_bits(), Ordering::Relaxed);
    }

    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate.load(Ordering::Relaxed))
    }
}
