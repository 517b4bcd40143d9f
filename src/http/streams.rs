//! `POST /streams/metrics` and `POST /streams/uploads`: a chunked body of
//! newline-delimited JSON, read line by line as it arrives. A line is
//! handed on only when the previous one was written, so a client that
//! sends faster than the database takes waits (backpressure), and memory
//! holds one line whatever the body's size.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{ConnectInfo, Query, Request, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use futures_util::{stream, Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{authenticate, client_error, AppState};
use crate::{
    domains::ingest::{ingest_metrics, upload, Line, Refusal},
    error::ErrorCode,
    services::RateLimiter,
};

/// Limits of the stream endpoints.
pub struct StreamLimits {
    /// Largest body, in bytes.
    pub max_body_bytes: u64,
    /// Longest line, in bytes.
    pub max_line_bytes: usize,
    /// Largest decoded upload chunk, in bytes.
    pub max_chunk_bytes: usize,
    /// Longest wait for the next piece of a body.
    pub idle_timeout: Duration,
    /// Stream requests per user per minute.
    pub per_user: RateLimiter,
    /// Stream requests running at once, over all users: each holds pooled
    /// connections for as long as its client sends.
    pub running: Arc<Semaphore>,
    /// Stream requests running at once per user.
    pub running_per_user: usize,
    /// Users' running requests.
    pub users: Mutex<HashMap<String, usize>>,
}

/// One running stream request of a user; counted until dropped.
struct Running<'a> {
    limits: &'a StreamLimits,
    user: String,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut users = self
            .limits
            .users
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = users.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                users.remove(&self.user);
            }
        }
    }
}

impl StreamLimits {
    /// A place for one more request of `user`, if there is room.
    fn start(&self, user: &str) -> Option<Running<'_>> {
        let slot = self.running.clone().try_acquire_owned().ok()?;
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        let count = users.entry(user.to_owned()).or_default();
        if *count >= self.running_per_user {
            return None;
        }
        *count += 1;
        Some(Running {
            limits: self,
            user: user.to_owned(),
            _slot: slot,
        })
    }
}

/// Lines of `body`, numbered from 1, within the limits.
fn lines(body: Body, limits: &StreamLimits) -> impl Stream<Item = Result<Line, Refusal>> + Send {
    struct Reader<S> {
        chunks: S,
        buffer: Vec<u8>,
        /// Where the next line starts in `buffer`.
        start: usize,
        /// How far past `start` is known to hold no newline.
        scanned: usize,
        number: u64,
        total: u64,
        ended: bool,
    }
    let (max_body, max_line, idle) = (
        limits.max_body_bytes,
        limits.max_line_bytes,
        limits.idle_timeout,
    );
    let reader = Reader {
        chunks: body.into_data_stream(),
        buffer: Vec::new(),
        start: 0,
        scanned: 0,
        number: 0,
        total: 0,
        ended: false,
    };
    stream::unfold(Some(reader), move |state| async move {
        let mut reader = state?;
        loop {
            let rest = &reader.buffer[reader.start..];
            // Only bytes not looked at before: a line sent a byte at a time
            // costs linear time, not quadratic.
            let from = reader.scanned.min(rest.len());
            let newline = rest[from..]
                .iter()
                .position(|b| *b == b'\n')
                .map(|at| at + from);
            reader.scanned = if newline.is_some() { 0 } else { rest.len() };
            if newline.unwrap_or(rest.len()) > max_line {
                let refusal = Refusal::TooLarge(format!(
                    "line {}: longer than {max_line} bytes",
                    reader.number + 1
                ));
                return Some((Err(refusal), None));
            }
            if let Some(end) = newline {
                reader.number += 1;
                let line = Line {
                    number: reader.number,
                    bytes: rest[..end].to_vec(),
                };
                reader.start += end + 1;
                return Some((Ok(line), Some(reader)));
            }
            // No whole line left: drop what was handed out before reading on.
            reader.buffer.drain(..reader.start);
            reader.start = 0;
            if reader.ended {
                if reader.buffer.is_empty() {
                    return None;
                }
                // The last line needs no newline.
                reader.number += 1;
                let line = Line {
                    number: reader.number,
                    bytes: std::mem::take(&mut reader.buffer),
                };
                reader.scanned = 0;
                return Some((Ok(line), Some(reader)));
            }
            let next: Option<Result<Bytes, axum::Error>> =
                match tokio::time::timeout(idle, reader.chunks.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        let refusal = Refusal::Read(format!("nothing arrived for {idle:?}"));
                        return Some((Err(refusal), None));
                    }
                };
            match next {
                None => reader.ended = true,
                Some(Err(error)) => return Some((Err(Refusal::Read(error.to_string())), None)),
                Some(Ok(bytes)) => {
                    reader.total += bytes.len() as u64;
                    if reader.total > max_body {
                        let refusal =
                            Refusal::TooLarge(format!("the body is larger than {max_body} bytes"));
                        return Some((Err(refusal), None));
                    }
                    reader.buffer.extend_from_slice(&bytes);
                }
            }
        }
    })
}

/// The signed-in user, within their request rate; else the refusal.
async fn admit(state: &AppState, headers: &HeaderMap) -> Result<String, Response> {
    let viewer = match authenticate(state, headers).await? {
        Some(viewer) => viewer,
        None => {
            return Err(client_error(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthenticated,
                "sign in: send `Authorization: Bearer <token>`",
            ))
        }
    };
    if !state.streams.per_user.allow(&viewer.user_id) {
        return Err(client_error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many stream requests; slow down",
        ));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > state.streams.max_body_bytes) {
        return Err(refused(
            Refusal::TooLarge(format!(
                "the body is larger than {} bytes",
                state.streams.max_body_bytes
            )),
            None,
        ));
    }
    Ok(viewer.user_id)
}

/// Most of a refused request's body read (and thrown away) so that its
/// client, still sending, gets the answer rather than a reset connection.
const DRAIN_BYTES: usize = 64 << 20;
/// Longest time spent reading a refused request's body.
const DRAIN_FOR: Duration = Duration::from_secs(5);

/// Reads what is left of a refused body, within [`DRAIN_BYTES`] and
/// [`DRAIN_FOR`]: closing a connection the client is still writing to
/// makes it see a broken pipe instead of why it was refused. A body over
/// its size limit or one that stopped arriving is not read further.
async fn drain(lines: &mut (impl Stream<Item = Result<Line, Refusal>> + Unpin), refusal: &Refusal) {
    if matches!(refusal, Refusal::TooLarge(_) | Refusal::Read(_)) {
        return;
    }
    let _ = tokio::time::timeout(DRAIN_FOR, async {
        let mut read = 0;
        while let Some(Ok(line)) = lines.next().await {
            read += line.bytes.len() + 1;
            if read > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

/// Too many stream requests at once (this user's, or everyone's).
fn busy() -> Response {
    client_error(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::RateLimited,
        "too many stream requests running at once; retry when one has finished",
    )
}

/// What a refused request answers; nothing of it was kept.
fn refused(refusal: Refusal, upload_id: Option<String>) -> Response {
    let (status, code) = match &refusal {
        Refusal::BadLine { .. } | Refusal::Read(_) | Refusal::BadParameter(_) => {
            (StatusCode::BAD_REQUEST, ErrorCode::BadUserInput)
        }
        Refusal::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::BadUserInput),
        Refusal::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::BadUserInput),
        Refusal::Database(error) if error.is_unreachable() => {
            (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
        }
        Refusal::Database(error) => {
            tracing::error!(%error, "a stream request failed");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({
                    "error": "internal error; the server log has the details; nothing was kept",
                    "code": ErrorCode::Internal.as_str(),
                    "uploadId": upload_id,
                })),
            )
                .into_response();
        }
    };
    let line = match &refusal {
        Refusal::BadLine { line, .. } => Some(*line),
        _ => None,
    };
    (
        status,
        Json(json!({
            "error": format!("{refusal}; nothing was kept"),
            "code": code.as_str(),
            "line": line,
            "uploadId": upload_id,
        })),
    )
        .into_response()
}

/// Ingests metrics; answers the statistics of each name.
pub(super) async fn metrics(
    State(state): State<AppState>,
    ConnectInfo(_peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    state.traffic.count();
    let (parts, body) = request.into_parts();
    let user = match admit(&state, &parts.headers).await {
        Ok(user) => user,
        Err(refusal) => return refusal,
    };
    let Some(_running) = state.streams.start(&user) else {
        return busy();
    };
    let mut lines = Box::pin(lines(body, &state.streams));
    match ingest_metrics(&state.pool, &user, &mut lines).await {
        Ok(statistics) => {
            let rows: i64 = statistics.iter().map(|s| s.count).sum();
            Json(json!({"rows": rows, "statistics": statistics})).into_response()
        }
        Err(refusal) => {
            drain(&mut lines, &refusal).await;
            refused(refusal, None)
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct UploadParams {
    /// A UUID the client picks, to follow `uploadProgress` from the start.
    upload_id: Option<String>,
}

/// Stores an upload; answers its id, size, chunk count and SHA-256.
pub(super) async fn uploads(
    State(state): State<AppState>,
    ConnectInfo(_peer): ConnectInfo<SocketAddr>,
    Query(params): Query<UploadParams>,
    request: Request,
) -> Response {
    state.traffic.count();
    let (parts, body) = request.into_parts();
    let user = match admit(&state, &parts.headers).await {
        Ok(user) => user,
        Err(refusal) => return refusal,
    };
    let Some(_running) = state.streams.start(&user) else {
        return busy();
    };
    let mut lines = Box::pin(lines(body, &state.streams));
    match upload(
        &state.pool,
        &user,
        params.upload_id.as_deref(),
        state.streams.max_chunk_bytes,
        &mut lines,
    )
    .await
    {
        Ok(result) => Json(result).into_response(),
        Err((id, refusal)) => {
            drain(&mut lines, &refusal).await;
            refused(refusal, id)
        }
    }
}
