//! Schema assembly: the root types merged from every domain, and the only
//! place that adds context data.

use std::sync::Arc;

use async_graphql::{EmptyMutation, MergedObject, MergedSubscription, Schema};

use crate::{
    auth::AuthQuery,
    db::{ChangeLog, PageLimit},
    domains::{
        changes::{ChangesQuery, ChangesSubscription},
        countdown::{CountdownSubscription, Countdowns},
    },
    hub::Hub,
};

#[derive(MergedObject, Default)]
pub struct Query(ChangesQuery, AuthQuery);

#[derive(MergedSubscription, Default)]
pub struct Subscription(ChangesSubscription, CountdownSubscription);

pub type TidewireSchema = Schema<Query, EmptyMutation, Subscription>;

/// Settings resolvers need at run time.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Size of one subscriber's change-log reads.
    pub page: PageLimit,
    /// Deepest selection nesting a query may have.
    pub max_depth: usize,
    /// Most fields a query may select.
    pub max_complexity: usize,
    /// Longest `countdown(seconds)`.
    pub max_countdown: i32,
}

/// The schema with its context data, ready to execute.
pub fn build_schema(
    log: ChangeLog,
    hub: Arc<Hub>,
    countdowns: Arc<Countdowns>,
    limits: Limits,
) -> TidewireSchema {
    Schema::build(Query::default(), EmptyMutation, Subscription::default())
        .limit_depth(limits.max_depth)
        .limit_complexity(limits.max_complexity)
        .data(log)
        .data(hub)
        .data(countdowns)
        .data(limits)
        .finish()
}

/// The schema's SDL, as committed in `schema.graphql`.
pub fn sdl() -> String {
    Schema::build(Query::default(), EmptyMutation, Subscription::default())
        .finish()
        .sdl()
}
