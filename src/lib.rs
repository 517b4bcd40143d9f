//! Tidewire: Postgres row changes as live GraphQL subscriptions over
//! WebSocket.
//!
//! # Layout
//!
//! In the order data flows through it, each layer importing only those
//! above it in this list (ARCHITECTURE.md has the layers, one event hop by
//! hop, and the invariants with their tests):
//!
//! - [`config`]: every setting.
//! - [`db`]: the change log in Postgres (triggers fill `tidewire.changes` in
//!   commit order and NOTIFY), the embedded cluster, migrations, and the
//!   [`db::Listener`] that tails the log into a sink it is given.
//! - [`request_guard`]: query size and nesting, checked before any parse.
//! - [`hub`]: topic → subscribers with bounded buffers; a [`hub::Feed`] is one
//!   subscriber's catch-up-then-live stream; [`hub::Ring`] the byte-bounded
//!   buffer of shared results.
//! - [`error`]: client-facing error codes; [`auth`]: tokens and the
//!   `Viewer` behind a request.
//! - [`sharing`]: how a field declares who may share its results;
//!   [`services`]: sessions and revocation, rate limits, presence, traffic,
//!   countdown timers.
//! - [`domains`]: GraphQL types and resolvers, one module per domain;
//!   [`streams`] holds the throttle, debounce and batch operators they use.
//! - [`graphql`]: schema assembly.
//! - [`fanout`]: subscriptions of one shape and visibility class executed
//!   once, results shared.
//! - [`http`]: the accept loop, the router, the WebSocket protocols, health
//!   and metrics.
//! - [`server`]: start-up, serving and ordered shutdown.

pub mod auth;
pub mod config;
pub mod db;
pub mod domains;
pub mod error;
pub mod fanout;
pub mod graphql;
pub mod http;
pub mod hub;
pub mod request_guard;
pub mod server;
pub mod services;
pub mod sharing;
pub mod streams;

pub use domains::Limits;
