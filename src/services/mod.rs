//! Services the domains share, below them and above the hub: sessions and
//! revocation, rate limits (and the mutation guard), presence (nodes' and
//! rooms'), the bus between nodes, the traffic counter and countdown
//! timers. Nothing here knows GraphQL schemas or
//! HTTP.

pub mod bus;
pub mod countdowns;
mod mutation_limit;
pub mod presence;
mod rate_limit;
pub mod rooms;
pub mod sessions;
mod traffic;

pub use bus::Bus;
pub use countdowns::Countdowns;
pub use mutation_limit::MutationLimit;
pub use rate_limit::RateLimiter;
pub use rooms::Rooms;
pub use sessions::{is_revoked, Revocation, Revocations, SessionCheckError};
pub use traffic::Traffic;
