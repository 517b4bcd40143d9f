//! Accounts and sessions: `signUp`, `signIn`, `signOut`, `revokeSessions`.
//!
//! Passwords are stored as argon2id hashes. Each sign-in opens a session
//! (`tidewire.sessions`) named in the token's `sid`; revoking it notifies
//! `tidewire_revoked`, which every node's listener hears, so the session's
//! streams end everywhere.

use argon2::{
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use async_graphql::{Context, Object, Result, SimpleObject, ID};
use deadpool_postgres::Pool;

use crate::{
    auth::{now, Issuer, Role, Viewer},
    db::REVOKED_CHANNEL,
    error::{internal, ErrorCode},
    http::RateLimiter,
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
    async fn sign_up(
        &self,
        ctx: &Context<'_>,
        email: String,
        password: String,
    ) -> Result<AuthPayload> {
        limit(ctx)?;
        let email = check_email(&email)?;
        if password.chars().count() < 8 {
            return Err(
                ErrorCode::BadUserInput.error("the password must have at least 8 characters")
            );
        }
        let hash = hash_password(password).await?;
        let client = pool(ctx).get().await.map_err(internal)?;
        let row = client
            .query_opt(
                "INSERT INTO tidewire.users (email, password_hash) VALUES ($1, $2)
                 ON CONFLICT (email) DO NOTHING RETURNING id::text",
                &[&email, &hash],
            )
            .await
            .map_err(internal)?
            .ok_or_else(|| ErrorCode::BadUserInput.error("an account with this email exists"))?;
        open_session(ctx, row.get(0), email, Role::User).await
    }

    /// Signs in with email and password.
    async fn sign_in(
        &self,
        ctx: &Context<'_>,
        email: String,
        password: String,
    ) -> Result<AuthPayload> {
        limit(ctx)?;
        let wrong = || ErrorCode::Unauthenticated.error("wrong email or password");
        let client = pool(ctx).get().await.map_err(internal)?;
        let row = client
            .query_opt(
                "SELECT id::text, email, password_hash, role FROM tidewire.users WHERE email = $1",
                &[&email.trim().to_lowercase()],
            )
            .await
            .map_err(internal)?
            .ok_or_else(wrong)?;
        let hash: String = row.get(2);
        if !verify_password(password, hash).await? {
            return Err(wrong());
        }
        let role = Role::parse(row.get::<_, &str>(3)).unwrap_or(Role::User);
        open_session(ctx, row.get(0), row.get(1), role).await
    }

    /// Ends the caller's session: its streams close on every node.
    async fn sign_out(&self, ctx: &Context<'_>) -> Result<bool> {
        limit(ctx)?;
        let viewer = signed_in(ctx)?;
        let sid = viewer
            .session_id
            .as_deref()
            .ok_or_else(|| ErrorCode::BadUserInput.error("this token has no session to end"))?;
        let revoked = revoke(ctx, "id::text = $1", sid, &serde_json::json!({"sid": sid})).await?;
        Ok(revoked > 0)
    }

    /// Admin: ends every session of a user; returns how many.
    async fn revoke_sessions(&self, ctx: &Context<'_>, user_id: ID) -> Result<i32> {
        limit(ctx)?;
        let viewer = signed_in(ctx)?;
        if viewer.role != Role::Admin {
            return Err(ErrorCode::Forbidden.error("revokeSessions is for admins"));
        }
        let revoked = revoke(
            ctx,
            "user_id::text = $1",
            &user_id,
            &serde_json::json!({"user": &*user_id}),
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

/// Mutations per session (or user, or signed-out address) per second
/// (`RATE_LIMITED` beyond).
pub(crate) fn limit(ctx: &Context<'_>) -> Result<()> {
    let limiter = ctx.data_unchecked::<std::sync::Arc<RateLimiter>>();
    let key = match (ctx.data_opt::<Viewer>(), ctx.data_opt::<std::net::IpAddr>()) {
        (
            Some(Viewer {
                session_id: Some(sid),
                ..
            }),
            _,
        ) => format!("session:{sid}"),
        (Some(viewer), _) => format!("user:{}", viewer.user_id),
        (None, Some(ip)) => format!("ip:{ip}"),
        (None, None) => "anonymous".to_owned(),
    };
    if limiter.allow(&key) {
        Ok(())
    } else {
        Err(ErrorCode::RateLimited.error("too many mutations; slow down"))
    }
}

fn check_email(email: &str) -> Result<String> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
        && !email.chars().any(char::is_whitespace);
    if valid {
        Ok(email)
    } else {
        Err(ErrorCode::BadUserInput.error("not an email address"))
    }
}

async fn open_session(
    ctx: &Context<'_>,
    user_id: String,
    email: String,
    role: Role,
) -> Result<AuthPayload> {
    let issuer = ctx.data_opt::<Issuer>().ok_or_else(|| {
        ErrorCode::BadUserInput.error("this server does not issue tokens (no JWT secret)")
    })?;
    let expires_at = now() + issuer.ttl;
    let client = pool(ctx).get().await.map_err(internal)?;
    let row = client
        .query_one(
            "INSERT INTO tidewire.sessions (user_id, expires_at)
             VALUES ($1::text::uuid, to_timestamp($2)) RETURNING id::text",
            &[&user_id, &(expires_at as f64)],
        )
        .await
        .map_err(internal)?;
    let sid: String = row.get(0);
    Ok(AuthPayload {
        token: issuer.issue(&user_id, role, &sid, expires_at),
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
    let mut client = pool(ctx).get().await.map_err(internal)?;
    let tx = client.transaction().await.map_err(internal)?;
    let revoked = tx
        .execute(
            &format!("UPDATE tidewire.sessions SET revoked_at = now() WHERE {condition} AND revoked_at IS NULL"),
            &[&value],
        )
        .await
        .map_err(internal)?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&REVOKED_CHANNEL, &notice.to_string()],
    )
    .await
    .map_err(internal)?;
    tx.commit().await.map_err(internal)?;
    Ok(revoked)
}

/// Whether session `sid` was revoked. Sessions this server does not know
/// (tokens of another issuer) are not.
pub async fn is_revoked(pool: &Pool, sid: &str) -> bool {
    let Ok(client) = pool.get().await else {
        return false;
    };
    client
        .query_opt(
            "SELECT revoked_at IS NOT NULL FROM tidewire.sessions WHERE id::text = $1",
            &[&sid],
        )
        .await
        .ok()
        .flatten()
        .is_some_and(|row| row.get(0))
}

/// argon2id with a random salt, off the async threads (it is slow on
/// purpose).
pub async fn hash_password(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let mut bytes = [0u8; 16];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
        let salt =
            SaltString::encode_b64(&bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| std::io::Error::other(e.to_string()))
    })
    .await
    .map_err(internal)?
    .map_err(internal)
}

async fn verify_password(password: String, hash: String) -> Result<bool> {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .map_err(internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse".into(), hash.clone())
            .await
            .unwrap());
        assert!(!verify_password("wrong horse".into(), hash.clone())
            .await
            .unwrap());
        assert_ne!(
            hash,
            hash_password("correct horse".into()).await.unwrap(),
            "salted"
        );
    }

    #[test]
    fn emails_are_checked() {
        assert_eq!(check_email(" Ann@Example.com ").unwrap(), "ann@example.com");
        for bad in [
            "",
            "ann",
            "@example.com",
            "ann@localhost",
            "a b@example.com",
        ] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
    }
}
