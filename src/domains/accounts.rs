//! Accounts and sessions: `signUp`, `signIn`, `signOut`, `revokeSessions`.
//!
//! Passwords are stored as argon2id hashes ([`password`]). Each sign-in
//! opens a session (`tidewire.sessions`) named in the token's `sid`;
//! revoking it notifies `tidewire_revoked`, which every node's listener
//! hears, so the session's streams end everywhere. A token whose session is
//! revoked or gone is refused.
//!
//! Credential attempts (`signIn`, `signUp`) are limited per client address
//! and per account ([`CredentialLimits`]), whatever tokens the caller sends
//! along. Every resolver holds at most one pooled connection at a time, and
//! none while a password is hashed.

mod email;
mod password;

use std::{net::IpAddr, sync::Arc};

use async_graphql::{Context, Object, Result, SimpleObject, ID};
use deadpool_postgres::{Client, Pool};

use self::password::{verify_against_dummy, verify_password};
pub use self::{
    email::{normalize_email, EmailError},
    password::{hash_password, PasswordError},
};
use crate::{
    auth::{now, Issuer, Role, Viewer},
    db::REVOKED_CHANNEL,
    error::{database, internal, ErrorCode},
    services::MutationLimit,
    services::RateLimiter,
};

#[derive(SimpleObject)]
pub struct User {
    pub id: ID,
    pub email: String,
    pub role: Role,
}

/// What `signUp` and `signIn` return.
#[derive(SimpleObject)]
pub struct AuthPayload {
    /// Send as `Authorization: Bearer <token>` or in `connection_init`.
    pub token: String,
    pub expires_at: i64,
    pub user: User,
}

#[derive(Default)]
pub struct AccountsMutation;

#[Object]
impl AccountsMutation {
    /// Creates an account (role `user`) and signs it in.
    #[graphql(guard = "MutationLimit")]
    async fn sign_up(
        &self,
        ctx: &Context<'_>,
        email: String,
        password: String,
    ) -> Result<AuthPayload> {
        issuer(ctx)?;
        let email = email_input(&email)?;
        credential_attempt(ctx, &email)?;
        if password.chars().count() < 8 {
            return Err(
                ErrorCode::BadUserInput.error("the password must have at least 8 characters")
            );
        }
        let hash = hash_password(password).await.map_err(password_error)?;
        let client = pool(ctx).get().await.map_err(database)?;
        let row = client
            .query_opt(
                "INSERT INTO tidewire.users (email, password_hash) VALUES ($1, $2)
                 ON CONFLICT (email) DO NOTHING RETURNING id::text",
                &[&email, &hash],
            )
            .await
            .map_err(database)?
            .ok_or_else(|| ErrorCode::BadUserInput.error("an account with this email exists"))?;
        open_session(ctx, &client, row.get(0), email, Role::User).await
    }

    /// Signs in with email and password.
    #[graphql(guard = "MutationLimit")]
    async fn sign_in(
        &self,
        ctx: &Context<'_>,
        email: String,
        password: String,
    ) -> Result<AuthPayload> {
        // Said before any password work: no account can sign in here.
        issuer(ctx)?;
        let email = email_input(&email)?;
        credential_attempt(ctx, &email)?;
        // An unknown email and a wrong password take the same work and get
        // the same answer.
        let wrong = || ErrorCode::Unauthenticated.error("wrong email or password");
        let row = {
            let client = pool(ctx).get().await.map_err(database)?;
            client
                .query_opt(
                    "SELECT id::text, email, password_hash, role FROM tidewire.users WHERE email = $1",
                    &[&email],
                )
                .await
                .map_err(database)?
            // The connection goes back to the pool before the slow hash.
        };
        let Some(row) = row else {
            verify_against_dummy(password)
                .await
                .map_err(password_error)?;
            return Err(wrong());
        };
        let hash: String = row.get(2);
        if !verify_password(password, hash)
            .await
            .map_err(password_error)?
        {
            return Err(wrong());
        }
        // The column's CHECK allows only these two; anything else gets the
        // lesser role.
        let role = Role::parse(row.get::<_, &str>(3)).unwrap_or(Role::User);
        let client = pool(ctx).get().await.map_err(database)?;
        open_session(ctx, &client, row.get(0), row.get(1), role).await
    }

    /// Ends the caller's session: its streams close on every node.
    #[graphql(guard = "MutationLimit")]
    async fn sign_out(&self, ctx: &Context<'_>) -> Result<bool> {
        let viewer = signed_in(ctx)?;
        let sid = viewer
            .session_id
            .as_deref()
            .ok_or_else(|| ErrorCode::BadUserInput.error("this token has no session to end"))?;
        let revoked = revoke(ctx, "id::text = $1", sid, &serde_json::json!({"sid": sid})).await?;
        Ok(revoked > 0)
    }

    /// Admin: ends every session of a user; returns how many. An id no
    /// account has is `NOT_FOUND` (likely a mistake), not "none ended".
    #[graphql(guard = "MutationLimit")]
    async fn revoke_sessions(&self, ctx: &Context<'_>, user_id: ID) -> Result<i32> {
        let viewer = signed_in(ctx)?;
        if viewer.role != Role::Admin {
            return Err(ErrorCode::Forbidden.error("revokeSessions is for admins"));
        }
        if !crate::services::sessions::is_uuid(&user_id) {
            return Err(ErrorCode::BadUserInput.error("`userId` is not a user id"));
        }
        // The id as `id::text` spells it, which the notice must carry.
        let user: String = pool(ctx)
            .get()
            .await
            .map_err(database)?
            .query_opt(
                "SELECT id::text FROM tidewire.users WHERE id = $1::text::uuid",
                &[&*user_id],
            )
            .await
            .map_err(database)?
            .ok_or_else(|| ErrorCode::NotFound.error("no user has this id"))?
            .get(0);
        let revoked = revoke(
            ctx,
            "user_id::text = $1",
            &user,
            &serde_json::json!({ "user": user }),
        )
        .await?;
        Ok(revoked as i32)
    }
}

fn pool<'a>(ctx: &Context<'a>) -> &'a Pool {
    ctx.data_unchecked::<Pool>()
}

fn signed_in<'a>(ctx: &Context<'a>) -> Result<&'a Viewer> {
    ctx.data_opt::<Viewer>()
        .ok_or_else(|| ErrorCode::Unauthenticated.error("sign in first"))
}

/// Limits on credential attempts (`signIn`, `signUp`): per client address
/// and per target account (normalized email), per minute. Both must allow.
/// Keyed by neither token nor session, so sending many tokens along does not
/// buy more attempts.
#[derive(Debug)]
pub struct CredentialLimits {
    per_address: RateLimiter,
    per_account: RateLimiter,
}

impl CredentialLimits {
    pub fn new(per_address_per_minute: u32, per_account_per_minute: u32) -> Self {
        CredentialLimits {
            per_address: RateLimiter::per_minute(per_address_per_minute),
            per_account: RateLimiter::per_minute(per_account_per_minute),
        }
    }

    /// Counts one attempt from `address` (unknown addresses share one
    /// budget) on `email`; false when either limit is reached.
    pub fn allow(&self, address: Option<IpAddr>, email: &str) -> bool {
        let address = address.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        self.per_address.allow(&address) && self.per_account.allow(email)
    }
}

fn credential_attempt(ctx: &Context<'_>, email: &str) -> Result<()> {
    let limits = ctx
        .data::<Arc<CredentialLimits>>()
        .map_err(|e| internal(e.message))?;
    if limits.allow(ctx.data_opt::<IpAddr>().copied(), email) {
        Ok(())
    } else {
        Err(ErrorCode::RateLimited.error("too many sign-in attempts; try again in a minute"))
    }
}

fn email_input(email: &str) -> Result<String> {
    normalize_email(email).map_err(|e| ErrorCode::BadUserInput.error(e.to_string()))
}

fn password_error(error: PasswordError) -> async_graphql::Error {
    match error {
        PasswordError::Busy => ErrorCode::RateLimited.error(error.to_string()),
        PasswordError::Failed(_) => internal(error),
    }
}

/// Opens a session on `client`, the resolver's one connection.
async fn open_session(
    ctx: &Context<'_>,
    client: &Client,
    user_id: String,
    email: String,
    role: Role,
) -> Result<AuthPayload> {
    let issuer = issuer(ctx)?;
    let expires_at = now() + issuer.ttl;
    let row = client
        .query_one(
            "INSERT INTO tidewire.sessions (user_id, expires_at)
             VALUES ($1::text::uuid, to_timestamp($2)) RETURNING id::text",
            &[&user_id, &(expires_at as f64)],
        )
        .await
        .map_err(database)?;
    let sid: String = row.get(0);
    Ok(AuthPayload {
        token: issuer
            .issue(&user_id, role, &sid, expires_at)
            .map_err(internal)?,
        expires_at,
        user: User {
            id: ID(user_id),
            email,
            role,
        },
    })
}

/// Marks sessions revoked and tells every node, in one transaction.
async fn revoke(
    ctx: &Context<'_>,
    condition: &str,
    value: &str,
    notice: &serde_json::Value,
) -> Result<u64> {
    let mut client = pool(ctx).get().await.map_err(database)?;
    let tx = client.transaction().await.map_err(database)?;
    let revoked = tx
        .execute(
            &format!("UPDATE tidewire.sessions SET revoked_at = now() WHERE {condition} AND revoked_at IS NULL"),
            &[&value],
        )
        .await
        .map_err(database)?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&REVOKED_CHANNEL, &notice.to_string()],
    )
    .await
    .map_err(database)?;
    tx.commit().await.map_err(database)?;
    Ok(revoked)
}

/// The token issuer; a server with only an external issuer's key has none.
fn issuer<'a>(ctx: &Context<'a>) -> Result<&'a Issuer> {
    ctx.data_opt::<Issuer>().ok_or_else(|| {
        ErrorCode::BadUserInput.error(
            "this server does not issue tokens (it verifies another issuer's): sign in there",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_attempts_are_limited_per_address_and_per_account() {
        let limits = CredentialLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(limits.allow(Some(a), "ann@example.com"));
        assert!(limits.allow(Some(b), "ann@example.com"));
        // Ann's account is done for this minute, from any address…
        assert!(!limits.allow(Some(b), "ann@example.com"));
        // …while address a, having spent 1 of 3, goes on elsewhere.
        assert!(limits.allow(Some(a), "bo@example.com"));
        assert!(limits.allow(Some(a), "cy@example.com"));
        assert!(!limits.allow(Some(a), "dee@example.com"));
        assert!(limits.allow(None, "dee@example.com"));
    }
}
