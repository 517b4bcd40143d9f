//! Schema assembly: the root types merged from every domain, and the only
//! place that adds context data.

use std::sync::Arc;

use async_graphql::{MergedObject, MergedSubscription, Schema};
use deadpool_postgres::Pool;

use crate::{
    auth::{AuthQuery, Issuer},
    db::ChangeLog,
    domains::Limits,
    domains::{
        accounts::{AccountsMutation, CredentialLimits},
        chat::{ChatMutation, ChatQuery, ChatSubscription, Memberships},
        dashboard::{DashboardMutation, DashboardQuery, DashboardSubscription},
        game::{GameMutation, GameQuery, GameSubscription},
        ingest::{UploadsQuery, UploadsSubscription},
        live_rows::{LiveRowsSubscription, SnapshotCache},
        notifications::{NotificationsMutation, NotificationsQuery, NotificationsSubscription},
        stocks::{StocksMutation, StocksQuery, StocksSubscription},
    },
    domains::{
        changes::{ChangesQuery, ChangesSubscription},
        countdown::CountdownSubscription,
    },
    hub::Hub,
    request_guard::RequestGuard,
    services::{Countdowns, RateLimiter, Rooms, Traffic},
    sharing::SharingRules,
};

#[derive(MergedObject, Default)]
pub struct Query(
    ChangesQuery,
    AuthQuery,
    NotificationsQuery,
    StocksQuery,
    DashboardQuery,
    ChatQuery,
    UploadsQuery,
    GameQuery,
);

#[derive(MergedSubscription, Default)]
pub struct Subscription(
    ChangesSubscription,
    CountdownSubscription,
    NotificationsSubscription,
    StocksSubscription,
    DashboardSubscription,
    ChatSubscription,
    LiveRowsSubscription,
    UploadsSubscription,
    GameSubscription,
);

#[derive(MergedObject, Default)]
pub struct Mutation(
    AccountsMutation,
    NotificationsMutation,
    StocksMutation,
    DashboardMutation,
    ChatMutation,
    GameMutation,
);

pub type TidewireSchema = Schema<Query, Mutation, Subscription>;

/// The schema with its context data, ready to execute.
/// What resolvers reach through the context.
pub struct Services {
    pub log: ChangeLog,
    pub hub: Arc<Hub>,
    pub countdowns: Arc<Countdowns>,
    /// Pool for domain queries (accounts, …).
    pub pool: Pool,
    /// Signs tokens; absent when only an external issuer's key is set.
    pub issuer: Option<Issuer>,
    pub rate_limiter: Arc<RateLimiter>,
    /// `signIn`/`signUp` attempts per address and per account.
    pub credential_limits: Arc<CredentialLimits>,
    pub traffic: Arc<Traffic>,
    /// Chat rooms' presence and typing, and members' streams.
    pub rooms: Arc<Rooms>,
    pub memberships: Arc<Memberships>,
    /// Snapshots of live sets, kept a moment for crowds.
    pub live_snapshots: Arc<SnapshotCache>,
}

pub fn build_schema(services: Services, limits: Limits) -> TidewireSchema {
    let schema = Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .limit_depth(limits.max_depth)
    .limit_complexity(limits.max_complexity)
    .extension(RequestGuard(limits.query))
    .data(services.log)
    .data(services.hub)
    .data(services.countdowns)
    .data(services.pool)
    .data(services.rate_limiter)
    .data(services.credential_limits)
    .data(services.traffic)
    .data(services.rooms)
    .data(services.memberships)
    .data(services.live_snapshots)
    .data(limits);
    match services.issuer {
        Some(issuer) => schema.data(issuer).finish(),
        None => schema.finish(),
    }
}

/// The sharing rules of every shareable subscription field (see
/// `crate::sharing`).
pub fn sharing_rules(services: &Services) -> SharingRules {
    SharingRules::default()
        .with(
            "changes",
            crate::domains::changes::sharing(services.log.clone()),
        )
        .with("notifications", crate::domains::notifications::sharing())
        .with(
            "liveRows",
            crate::domains::live_rows::sharing(services.log.clone()),
        )
        .with(
            "chatRoom",
            crate::domains::chat::sharing(
                services.pool.clone(),
                services.memberships.clone(),
                services.rooms.clone(),
            ),
        )
}

/// The schema's SDL, as committed in `schema.graphql`.
pub fn sdl() -> String {
    Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .finish()
    .sdl()
}
