//! Client-facing error codes (the README lists them) and the one place
//! that turns internal failures into a generic message.

use async_graphql::ErrorExtensions;

use crate::db::DbError;

/// The `extensions.code` of every error a client can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Unauthenticated,
    Forbidden,
    BadUserInput,
    NotFound,
    CursorExpired,
    RateLimited,
    /// The database cannot be reached right now; the same request may
    /// succeed shortly (retry with backoff, resuming from the last cursor).
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::BadUserInput => "BAD_USER_INPUT",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::CursorExpired => "CURSOR_EXPIRED",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// A GraphQL error with this code and a message meant for the client.
    pub fn error(self, message: impl Into<String>) -> async_graphql::Error {
        async_graphql::Error::new(message).extend_with(|_, ext| ext.set("code", self.as_str()))
    }
}

/// A feed past retention ends its stream with `CURSOR_EXPIRED`.
pub fn cursor_expired(expired: crate::hub::CursorExpired) -> async_graphql::Error {
    ErrorCode::CursorExpired.error(expired.to_string())
}

/// Gives every error of `response` an `extensions.code`: errors raised
/// before any resolver ran (syntax, validation, limits, variables) are the
/// client's input, so `BAD_USER_INPUT`.
pub fn with_codes(mut response: async_graphql::Response) -> async_graphql::Response {
    for error in &mut response.errors {
        let extensions = error.extensions.get_or_insert_with(Default::default);
        if extensions.get("code").is_none() {
            extensions.set("code", ErrorCode::BadUserInput.as_str());
        }
    }
    response
}

/// Logs `error` with its detail and returns a generic `INTERNAL` error: no
/// SQL, path or stack detail reaches the client.
pub fn internal(error: impl std::fmt::Display) -> async_graphql::Error {
    tracing::error!(%error, "internal error");
    ErrorCode::Internal.error("internal error; the server log has the details")
}

/// A failed database access: `UNAVAILABLE` when the database cannot be
/// reached right now (down, restarting, no connection free in time), which
/// a client should retry; anything else (a failing statement) is
/// [`internal`].
pub fn database(error: impl Into<DbError>) -> async_graphql::Error {
    let error = error.into();
    if !error.is_unreachable() {
        return internal(error);
    }
    tracing::warn!(%error, "database unavailable");
    ErrorCode::Unavailable.error("the database is unavailable right now; retry shortly")
}
