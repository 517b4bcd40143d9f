//! Tidewire: Postgres row changes as live GraphQL subscriptions over
//! WebSocket.
//!
//! # Layout
//!
//! In the order data flows through it:
//!
//! - [`db`]: the change log in Postgres (triggers fill `tidewire.changes` in
//!   commit order and NOTIFY), the embedded cluster, migrations, and the
//!   [`db::Listener`] that tails the log.
//! - [`hub`]: topic → subscribers with bounded buffers; a [`hub::Feed`] is one
//!   subscriber's catch-up-then-live stream.
//! - [`domains`]: GraphQL types and resolvers, one module per domain;
//!   [`streams`] holds the throttle, debounce and batch operators they use.
//! - [`fanout`]: identical subscriptions executed once, results shared.
//! - [`graphql`]: schema assembly.
//! - [`http`]: the router, the WebSocket protocols, health and metrics.
//! - [`server`]: start-up, serving and ordered shutdown.
//! - [`auth`]: token verification, the `Viewer` behind a request.
//! - [`config`]: every setting; [`error`]: client-facing error codes.

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
