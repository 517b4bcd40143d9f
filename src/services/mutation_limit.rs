//! `MutationLimit`: the guard every mutation carries — at most
//! `--mutations-per-second` per user (signed out: per address), else
//! `RATE_LIMITED`. Keyed by user, not session or token, so signing in
//! many times buys no more.

use std::{net::IpAddr, sync::Arc};

use async_graphql::{Context, Guard, Result};

use super::RateLimiter;
use crate::{auth::Viewer, error::ErrorCode};

/// Add with `#[graphql(guard = "MutationLimit")]`.
pub struct MutationLimit;

impl Guard for MutationLimit {
    async fn check(&self, ctx: &Context<'_>) -> Result<()> {
        let key = match (ctx.data_opt::<Viewer>(), ctx.data_opt::<IpAddr>()) {
            (Some(viewer), _) => format!("user:{}", viewer.user_id),
            (None, Some(address)) => format!("address:{address}"),
            (None, None) => "anonymous".to_owned(),
        };
        // Fail closed: a schema without the limiter refuses mutations.
        let allowed = ctx
            .data_opt::<Arc<RateLimiter>>()
            .is_some_and(|limiter| limiter.allow(&key));
        if allowed {
            Ok(())
        } else {
            Err(ErrorCode::RateLimited.error("too many mutations; slow down"))
        }
    }
}
