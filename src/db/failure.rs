//! What a database failure means: the server out of reach for now (worth
//! retrying, `UNAVAILABLE` to clients) or anything else; and a description
//! that carries what Postgres said, since the driver's own `Display` is only
//! "db error" or "error connecting to server".

use deadpool_postgres::PoolError;

use super::DbError;

impl DbError {
    /// Whether the database could not be reached or is refusing connections
    /// for now (down, restarting, network, pool exhausted), so the same call
    /// may succeed later. A wrong password, a missing database or a missing
    /// permission is not: retrying cannot fix those.
    pub fn is_unreachable(&self) -> bool {
        match self {
            DbError::Postgres(error) => unreachable(error),
            DbError::Pool(PoolError::Timeout(_) | PoolError::Closed) => true,
            DbError::Pool(PoolError::Backend(error)) => unreachable(error),
            _ => false,
        }
    }
}

/// SQLSTATEs of a server that is going away, starting up or full:
/// connection exceptions (class 08), `admin_shutdown`, `crash_shutdown`,
/// `cannot_connect_now` ("the database system is starting up") and
/// `too_many_connections`.
fn transient_state(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

fn unreachable(error: &tokio_postgres::Error) -> bool {
    if let Some(db) = error.as_db_error() {
        return transient_state(db.code().code());
    }
    // Refused, reset, timed out, name not resolved: an I/O error somewhere
    // below the driver's error. A TLS or authentication-protocol failure or
    // a bad connection string has none.
    error.is_closed() || causes(error).any(|cause| cause.is::<std::io::Error>())
}

fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(error.source(), |&cause| cause.source())
}

/// `error` with what the server said (message, SQLSTATE, detail, hint) or,
/// without a server message, the chain of causes below it
/// ("error connecting to server: Connection refused (os error 111)").
pub(super) fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{db} (SQLSTATE {})", db.code().code());
    }
    causes(error).fold(error.to_string(), |text, cause| format!("{text}: {cause}"))
}

/// A pool error, with the connection failure behind it described.
pub(super) fn describe_pool(error: &PoolError) -> String {
    match error {
        PoolError::Backend(error) => format!("opening a connection: {}", describe(error)),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_states_that_pass_are_transient() {
        for code in ["08006", "08001", "57P01", "57P03", "53300"] {
            assert!(transient_state(code), "{code}");
        }
        // Authentication, missing database, missing permission.
        for code in ["28P01", "28000", "3D000", "42501", "42P01"] {
            assert!(!transient_state(code), "{code}");
        }
    }

    #[test]
    fn a_bad_connection_string_is_not_unreachable() {
        let error = "postgres://a:b@host:notaport/db"
            .parse::<tokio_postgres::Config>()
            .unwrap_err();
        assert!(!unreachable(&error));
        assert!(describe(&error).starts_with("invalid connection string: "));
        assert!(!DbError::Config("bad".into()).is_unreachable());
        assert!(
            DbError::Pool(PoolError::Timeout(deadpool_postgres::TimeoutType::Create))
                .is_unreachable()
        );
    }
}
