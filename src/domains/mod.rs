//! One module per domain: its GraphQL types and resolvers (and, as domains
//! grow, their SQL).

pub mod accounts;
pub mod changes;
pub mod chat;
pub mod countdown;
pub mod dashboard;
pub mod game;
pub mod ingest;
pub mod live_rows;
pub mod notifications;
pub mod stocks;

use crate::{db::PageLimit, request_guard::QueryLimits};

/// Settings resolvers need at run time.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Size of one subscriber's change-log reads.
    pub page: PageLimit,
    /// Deepest selection nesting a query may have.
    pub max_depth: usize,
    /// Most fields a query may select.
    pub max_complexity: usize,
    /// Most rows a `liveRows` set may hold.
    pub max_live_rows: usize,
    /// Longest chat message, in characters.
    pub max_chat_message_chars: usize,
    /// Longest `countdown(seconds)`.
    pub max_countdown: i32,
    /// Size and nesting of a query's text, checked before parsing.
    pub query: QueryLimits,
    /// Largest `where` of `changes`, in bytes of JSON.
    pub max_where_bytes: usize,
    /// Most conditions in one `where`.
    pub max_where_conditions: usize,
    /// Most values in one `_in` list of a `where`.
    pub max_where_in_values: usize,
}

/// The client whose turns a subscription's catch-up reads take
/// ([`crate::hub::CatchupQueue`]): its user when signed in, else its
/// address.
pub(crate) fn catchup_client(ctx: &async_graphql::Context<'_>) -> String {
    if let Some(crate::hub::CatchupLane(client)) = ctx.data_opt() {
        return client.clone();
    }
    let user = ctx
        .data_opt::<crate::auth::Viewer>()
        .map(|v| v.user_id.as_str());
    crate::hub::CatchupLane::of(user, ctx.data_opt::<std::net::IpAddr>().copied()).0
}

/// The signed-in caller; `UNAUTHENTICATED` saying what needs signing in
/// (`doing`, e.g. "send notifications") otherwise.
pub(crate) fn viewer<'a>(
    ctx: &async_graphql::Context<'a>,
    doing: &str,
) -> async_graphql::Result<&'a crate::auth::Viewer> {
    ctx.data_opt::<crate::auth::Viewer>().ok_or_else(|| {
        crate::error::ErrorCode::Unauthenticated.error(format!("sign in to {doing}"))
    })
}

/// A feed for this request's subscriber from `subscription` (a hub topic
/// it joined), after `after` (or live): its catch-up reads sized by the
/// server's page and taking the caller's turns.
pub(crate) fn feed(
    ctx: &async_graphql::Context<'_>,
    subscription: crate::hub::Subscription,
    after: Option<crate::db::Cursor>,
) -> crate::hub::Feed {
    crate::hub::Feed::new(
        ctx.data_unchecked::<crate::db::ChangeLog>().clone(),
        subscription,
        after,
        ctx.data_unchecked::<Limits>().page,
    )
    .queued_as(catchup_client(ctx))
}

/// The hub of this server, to join a topic.
pub(crate) fn hub<'a>(ctx: &async_graphql::Context<'a>) -> &'a std::sync::Arc<crate::hub::Hub> {
    ctx.data_unchecked()
}

/// Where a subscription starts in the log: after the cursor a catching-up
/// shared member resumes from ([`crate::hub::ResumeAfter`]), else after the
/// client's `after` argument, else live.
pub(crate) fn start_after(
    ctx: &async_graphql::Context<'_>,
    after: Option<String>,
) -> async_graphql::Result<Option<crate::db::Cursor>> {
    if let Some(crate::hub::ResumeAfter(cursor)) = ctx.data_opt() {
        return Ok(Some(*cursor));
    }
    after
        .map(|text| text.parse())
        .transpose()
        .map_err(|e: crate::db::BadCursor| {
            crate::error::ErrorCode::BadUserInput.error(e.to_string())
        })
}
