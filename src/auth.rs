//! `Verifier`: one `verify(token)` for HTTP (`Authorization: Bearer …`) and
//! WebSocket (`connection_init` payload `{"authorization": "Bearer …"}`).
//!
//! Tokens are JWTs with `sub`, `role` (`user` or `admin`), optional `sid`
//! (session id) and `exp`, signed HS256 with the configured secret or, from
//! another issuer, RS256 verifiable with a configured public key. The
//! algorithm comes from the key, never from the token, so `alg: none` and
//! algorithm-confusion tokens fail.

use std::time::{SystemTime, UNIX_EPOCH};

use async_graphql::{Context, Object, SimpleObject};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Who is asking. Comes from a verified token, never from an argument.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Viewer {
    pub user_id: String,
    pub role: Role,
    pub session_id: Option<String>,
    /// Seconds since the epoch at which the token stops being valid.
    pub expires_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, async_graphql::Enum)]
pub enum Role {
    User,
    Admin,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the Authorization value must be `Bearer <token>`")]
    NotBearer,
    #[error("this server has no key to verify tokens with")]
    NoKey,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid")]
    Invalid,
    #[error("the session was revoked")]
    Revoked,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    sid: Option<String>,
    exp: i64,
}

/// Signs the tokens `signUp` and `signIn` hand out (HS256, the configured
/// secret).
#[derive(Clone)]
pub struct Issuer {
    key: EncodingKey,
    /// How long a token lives, in seconds.
    pub ttl: i64,
}

impl Issuer {
    pub fn new(secret: &str, ttl: i64) -> Self {
        Issuer {
            key: EncodingKey::from_secret(secret.as_bytes()),
            ttl,
        }
    }

    /// A token for `user_id` in `session_id`, expiring at `expires_at`.
    /// A signed token; an error (never an empty token) if signing fails.
    pub fn issue(
        &self,
        user_id: &str,
        role: Role,
        session_id: &str,
        expires_at: i64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = Claims {
            sub: user_id.to_owned(),
            role: Some(role.as_str().to_owned()),
            sid: Some(session_id.to_owned()),
            exp: expires_at,
        };
        encode(&Header::default(), &claims, &self.key)
    }
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Verifies tokens with the configured keys.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<(DecodingKey, Algorithm)>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Verifier {
    /// From an HS256 secret and/or an RS256 public key (PEM).
    pub fn new(secret: Option<&str>, public_key_pem: Option<&[u8]>) -> Result<Self, String> {
        let mut keys = Vec::new();
        if let Some(secret) = secret {
            if secret.len() < 32 {
                return Err("the JWT secret must be at least 32 characters".into());
            }
            keys.push((
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            ));
        }
        if let Some(pem) = public_key_pem {
            let key = DecodingKey::from_rsa_pem(pem).map_err(|e| format!("JWT public key: {e}"))?;
            keys.push((key, Algorithm::RS256));
        }
        Ok(Verifier { keys })
    }

    /// The viewer behind `Bearer <token>`.
    pub fn verify_bearer(&self, value: &str) -> Result<Viewer, AuthError> {
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(AuthError::NotBearer)?;
        self.verify(token.trim())
    }

    pub fn verify(&self, token: &str) -> Result<Viewer, AuthError> {
        if self.keys.is_empty() {
            return Err(AuthError::NoKey);
        }
        let mut expired = false;
        for (key, algorithm) in &self.keys {
            let mut validation = Validation::new(*algorithm);
            validation.leeway = 0;
            validation.set_required_spec_claims(&["exp", "sub"]);
            match decode::<Claims>(token, key, &validation) {
                Ok(data) => return viewer(data.claims),
                Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                    expired = true;
                }
                Err(_) => {}
            }
        }
        Err(if expired {
            AuthError::Expired
        } else {
            AuthError::Invalid
        })
    }
}

/// Longest user id (`sub`) a token may carry: ids travel in room presence
/// and chat rows, so their size is bounded.
pub const MAX_USER_ID_BYTES: usize = 200;

fn viewer(claims: Claims) -> Result<Viewer, AuthError> {
    let role = match claims.role.as_deref() {
        None => Role::User,
        Some(role) => Role::parse(role).ok_or(AuthError::Invalid)?,
    };
    if claims.sub.is_empty() || claims.sub.len() > MAX_USER_ID_BYTES || claims.exp <= now() {
        return Err(if claims.exp <= now() {
            AuthError::Expired
        } else {
            AuthError::Invalid
        });
    }
    Ok(Viewer {
        user_id: claims.sub,
        role,
        session_id: claims.sid,
        expires_at: claims.exp,
    })
}

/// Seconds since the epoch.
/// Time left until the Unix time `at` (zero once it has passed), to the
/// millisecond: a token's streams end at its `exp`, not up to a second
/// later.
pub fn time_until(at: i64) -> std::time::Duration {
    let at = UNIX_EPOCH + std::time::Duration::from_secs(at.max(0) as u64);
    at.duration_since(SystemTime::now()).unwrap_or_default()
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The caller as the server sees it.
#[derive(SimpleObject)]
pub struct Me {
    pub id: String,
    pub role: Role,
    /// When the caller's token expires (seconds since the epoch).
    pub expires_at: i64,
}

#[derive(Default)]
pub struct AuthQuery;

#[Object]
impl AuthQuery {
    /// The authenticated caller; `UNAUTHENTICATED` without a valid token.
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<Me> {
        let viewer = ctx.data_opt::<Viewer>().ok_or_else(|| {
            crate::error::ErrorCode::Unauthenticated.error("sign in first: no valid token was sent")
        })?;
        Ok(Me {
            id: viewer.user_id.clone(),
            role: viewer.role,
            expires_at: viewer.expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn accepts_a_valid_token() {
        let verifier = Verifier::new(Some(SECRET), None).unwrap();
        let t = token(
            json!({"sub": "u1", "role": "admin", "sid": "s1", "exp": now() + 60}),
            SECRET,
        );
        let viewer = verifier.verify_bearer(&format!("Bearer {t}")).unwrap();
        assert_eq!(viewer.user_id, "u1");
        assert_eq!(viewer.role, Role::Admin);
        assert_eq!(viewer.session_id.as_deref(), Some("s1"));
    }

    #[test]
    fn refuses_forged_expired_and_unsigned_tokens() {
        let verifier = Verifier::new(Some(SECRET), None).unwrap();
        let forged = token(
            json!({"sub": "u1", "exp": now() + 60}),
            "another-secret-another-secret-000",
        );
        assert_eq!(verifier.verify(&forged), Err(AuthError::Invalid));
        let expired = token(json!({"sub": "u1", "exp": now() - 1}), SECRET);
        assert_eq!(verifier.verify(&expired), Err(AuthError::Expired));
        // alg: none, unsigned.
        let none = format!(
            "{}.{}.",
            base64url(r#"{"alg":"none","typ":"JWT"}"#),
            base64url(&json!({"sub": "u1", "role": "admin", "exp": now() + 60}).to_string())
        );
        assert_eq!(verifier.verify(&none), Err(AuthError::Invalid));
        let bad_role = token(
            json!({"sub": "u1", "role": "root", "exp": now() + 60}),
            SECRET,
        );
        assert_eq!(verifier.verify(&bad_role), Err(AuthError::Invalid));
        assert_eq!(verifier.verify_bearer("Token x"), Err(AuthError::NotBearer));
        assert_eq!(verifier.verify("garbage"), Err(AuthError::Invalid));
    }

    #[test]
    fn short_secrets_and_no_keys_are_refused() {
        assert!(Verifier::new(Some("short"), None).is_err());
        let none = Verifier::new(None, None).unwrap();
        assert_eq!(none.verify("x.y.z"), Err(AuthError::NoKey));
    }

    fn base64url(text: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = text.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}
