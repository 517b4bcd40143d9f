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
