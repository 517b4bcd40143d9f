//! One module per domain: its GraphQL types and resolvers (and, as domains
//! grow, their SQL).

pub mod accounts;
pub mod changes;
pub mod countdown;
pub mod dashboard;
pub mod notifications;
pub mod stocks;

/// The client whose turns a subscription's catch-up reads take
/// ([`crate::hub::CatchupQueue`]): its user when signed in, else its
/// address.
pub(crate) fn catchup_client(ctx: &async_graphql::Context<'_>) -> String {
    match (
        ctx.data_opt::<crate::auth::Viewer>(),
        ctx.data_opt::<std::net::IpAddr>(),
    ) {
        (Some(viewer), _) => format!("user:{}", viewer.user_id),
        (None, Some(address)) => format!("address:{address}"),
        (None, None) => "shared".to_owned(),
    }
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
