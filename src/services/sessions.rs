//! Sessions: whether a token's session still holds, and revocations heard
//! from the database for every open connection.

use deadpool_postgres::Pool;
use tokio::sync::broadcast;

use crate::db::NoticeSink;

/// A revocation heard from the database, for every open connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    Session(String),
    User(String),
    /// Revocations may have been missed (the listener reconnected): every
    /// connection checks its own session.
    Recheck,
}

impl Revocation {
    pub fn parse(payload: &str) -> Option<Revocation> {
        let value: serde_json::Value = serde_json::from_str(payload).ok()?;
        if let Some(sid) = value.get("sid").and_then(|v| v.as_str()) {
            return Some(Revocation::Session(sid.to_owned()));
        }
        value
            .get("user")
            .and_then(|v| v.as_str())
            .map(|u| Revocation::User(u.to_owned()))
    }
}

/// Hands revocations heard by the listener to every open connection.
#[derive(Debug, Clone)]
pub struct Revocations(broadcast::Sender<Revocation>);

impl Revocations {
    pub fn new(capacity: usize) -> Self {
        Revocations(broadcast::channel(capacity).0)
    }

    /// Revocations from now on (connections that signed in listen).
    pub fn subscribe(&self) -> broadcast::Receiver<Revocation> {
        self.0.subscribe()
    }
}

impl NoticeSink for Revocations {
    fn heard(&self, payload: &str) {
        if let Some(revocation) = Revocation::parse(payload) {
            let _ = self.0.send(revocation);
        }
    }

    fn may_have_missed(&self) {
        let _ = self.0.send(Revocation::Recheck);
    }
}

/// The session check could not be made (pool or query failed). Callers
/// refuse the token: an error never counts as "not revoked".
#[derive(Debug, thiserror::Error)]
#[error("cannot check the session: {0}")]
pub struct SessionCheckError(String);

/// Whether a token naming session `sid` must be refused: the session was
/// revoked, or it does not exist (an id this server never issued, or its
/// user was deleted, which deletes their sessions). Tokens of an external
/// issuer carry no `sid` and are not checked here.
pub async fn is_revoked(pool: &Pool, sid: &str) -> Result<bool, SessionCheckError> {
    if !is_uuid(sid) {
        // Not an id this server issues.
        return Ok(true);
    }
    let failed = |e: &dyn std::fmt::Display| SessionCheckError(e.to_string());
    let client = pool.get().await.map_err(|e| failed(&e))?;
    let row = client
        .query_opt(
            "SELECT revoked_at IS NOT NULL FROM tidewire.sessions WHERE id = $1::text::uuid",
            &[&sid],
        )
        .await
        .map_err(|e| failed(&e))?;
    match row {
        None => Ok(true),
        Some(row) => row.try_get(0).map_err(|e| failed(&e)),
    }
}

/// The canonical text form of a UUID, as `id::text` gives it.
pub(crate) fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_canonical_uuids() {
        assert!(is_uuid("0b6f2a2e-9a41-4a7e-8f5e-1d2c3b4a5f60"));
        for bad in [
            "",
            "s1",
            "0b6f2a2e9a414a7e8f5e1d2c3b4a5f60",
            "{0b6f2a2e-9a41-4a7e-8f5e-1d2c3b4a5f60}",
            "0b6f2a2e-9a41-4a7e-8f5e-1d2c3b4a5f6g",
            "0b6f2a2e-9a41-4a7e-8f5e-1d2c3b4a5f6é",
        ] {
            assert!(!is_uuid(bad), "{bad}");
        }
    }
}
