//! HTTP: one router for GraphQL (POST, GraphiQL, WebSocket), the
//! playground, health, readiness and metrics.

mod admission;
mod connections;
mod health;
mod outbox;
pub mod protocol;
mod streams;
mod subscription;
mod websocket;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use async_graphql::http::{playground_source, GraphQLPlaygroundConfig, GraphiQLSource};
use async_graphql_axum::GraphQLResponse;
use axum::{
    extract::{ConnectInfo, FromRequestParts, Request, State, WebSocketUpgrade},
    http::{header, HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::get,
    Router,
};
use deadpool_postgres::Pool;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

pub use admission::{normalize_origin, Admission};
use connections::WireMeter;
pub use connections::{serve, ConnectionLimits};
pub use streams::StreamLimits;
pub use subscription::Operations;

use crate::{
    auth::{AuthError, Verifier},
    db::ListenerStatus,
    domains::{chat::Memberships, live_rows::SnapshotCache},
    error::{with_codes, ErrorCode},
    graphql::TidewireSchema,
    hub::Hub,
    services::{is_revoked, Countdowns, Revocations, Rooms, SessionCheckError, Traffic},
};

/// Everything a request handler may need.
#[derive(Clone)]
pub struct AppState {
    pub schema: TidewireSchema,
    /// Used by `/readyz` to check the database is reachable.
    pub pool: Pool,
    pub listener: Arc<ListenerStatus>,
    pub hub: Arc<Hub>,
    /// Turns true when the server shuts down; open sockets close with 1001.
    pub shutdown: watch::Receiver<bool>,
    /// Every WebSocket task holds a clone; shutdown waits until all dropped.
    pub sockets_done: mpsc::Sender<()>,
    pub sockets: Arc<AtomicUsize>,
    pub max_message_bytes: usize,
    /// Largest `POST /graphql` body.
    pub max_body_bytes: usize,
    /// Time a client has to send a request's headers, and then its body.
    pub http_read_timeout: Duration,
    /// Time a WebSocket client has to complete a message it started.
    pub ws_message_timeout: Duration,
    /// Bearer token `/metrics` requires, if any.
    pub metrics_token: Option<String>,
    /// Per-connection bound on outgoing bytes not yet written.
    pub max_queued_bytes: usize,
    /// Outgoing bytes queued over all connections (a metric).
    pub queued_bytes: Arc<AtomicUsize>,
    pub keepalive: Duration,
    /// A connection that sends no `connection_init` this soon is closed
    /// with 4408.
    pub init_timeout: Duration,
    /// What each subscription runs with (fan-out, hub, the running count):
    /// the operation tasks hold this, not the whole state.
    pub operations: Arc<Operations>,
    /// Running countdowns (a metric).
    pub countdowns: Arc<Countdowns>,
    /// Chat rooms' presence and typing (metrics).
    pub rooms: Arc<Rooms>,
    /// Members' chat streams (metrics).
    pub memberships: Arc<Memberships>,
    /// Live-set snapshots kept for crowds (metrics).
    pub live_snapshots: Arc<SnapshotCache>,
    /// Limits of `POST /streams/*`.
    pub streams: Arc<StreamLimits>,
    /// Subscriptions one connection may run at once.
    pub max_subscriptions: usize,
    /// Requests served (for the dashboard's rate).
    pub traffic: Arc<Traffic>,
    /// Verifies the tokens of HTTP requests and WebSocket connections.
    pub verifier: Arc<Verifier>,
    /// Session revocations heard by this node's listener.
    pub revocations: Revocations,
    /// Who may open a WebSocket: origin allow-list, connections per address.
    pub admission: Arc<Admission>,
}

impl AppState {
    fn open_sockets(&self) -> usize {
        self.sockets.load(Ordering::Relaxed)
    }
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/playground", get(playground))
        .route("/streams/metrics", axum::routing::post(streams::metrics))
        .route("/streams/uploads", axum::routing::post(streams::uploads))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/", get(index))
        .with_state(state)
}

/// Queries and mutations; `Authorization: Bearer …` names the viewer. A
/// token that fails verification is refused with 401 and `UNAUTHENTICATED`.
async fn graphql_post(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    state.traffic.count();
    let (parts, body) = request.into_parts();
    let request = match read_request(&parts.headers, body, &state).await {
        Ok(request) => request,
        Err(refusal) => return refusal,
    };
    let mut request = request.data(peer.ip());
    match authenticate(&state, &parts.headers).await {
        Ok(Some(viewer)) => request = request.data(viewer),
        Ok(None) => {}
        Err(refusal) => return refusal,
    }
    GraphQLResponse::from(with_codes(state.schema.execute(request).await)).into_response()
}

/// The viewer an `Authorization: Bearer …` header names (`None` without
/// one). A token that fails verification is refused with 401 and
/// `UNAUTHENTICATED`; one whose session cannot be checked with 503.
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<crate::auth::Viewer>, Response> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let verified = value
        .to_str()
        .map_err(|_| AuthError::NotBearer)
        .and_then(|value| state.verifier.verify_bearer(value));
    let verified = match verified {
        Ok(viewer) => match viewer_revoked(state, &viewer).await {
            Ok(false) => Ok(viewer),
            Ok(true) => Err(AuthError::Revoked),
            // Fail closed, but not with 401: the token may be fine, and
            // a client told to sign in again would only add load.
            Err(error) => {
                tracing::error!(%error, "refusing a token whose session cannot be checked");
                return Err(client_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    "the session cannot be checked right now; try again shortly",
                ));
            }
        },
        other => other,
    };
    verified.map(Some).map_err(|error| {
        client_error(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthenticated,
            &error.to_string(),
        )
    })
}

/// The GraphQL request in a POST body. Only `application/json` is read: a
/// type a web page can send cross-site without a CORS preflight
/// (`text/plain`, forms) is refused, and so is a body over
/// `--max-body-bytes` or one that does not arrive within
/// `--http-read-timeout`.
async fn read_request(
    headers: &HeaderMap,
    body: axum::body::Body,
    state: &AppState,
) -> Result<async_graphql::Request, Response> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|kind| kind.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(client_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::BadUserInput,
            "send the request as `Content-Type: application/json`",
        ));
    }
    let too_large = || {
        client_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BadUserInput,
            &format!(
                "the request body is larger than {} bytes",
                state.max_body_bytes
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > state.max_body_bytes) {
        return Err(too_large());
    }
    let read = async {
        let mut chunks = body.into_data_stream();
        let mut bytes = Vec::with_capacity(declared.unwrap_or(0));
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|_| {
                client_error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadUserInput,
                    "the request body could not be read",
                )
            })?;
            if bytes.len() + chunk.len() > state.max_body_bytes {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    let bytes = tokio::time::timeout(state.http_read_timeout, read)
        .await
        .map_err(|_| {
            client_error(
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::BadUserInput,
                "the request body did not arrive in time",
            )
        })??;
    serde_json::from_slice(&bytes).map_err(|error| {
        client_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadUserInput,
            &format!("the body is not a GraphQL request: {error}"),
        )
    })
}

/// A GraphQL-shaped JSON error response outside of execution.
fn client_error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body = serde_json::json!({
        "errors": [{"message": message, "extensions": {"code": code.as_str()}}]
    });
    (status, axum::Json(body)).into_response()
}

/// A WebSocket upgrade starts a subscription socket; a browser gets GraphiQL.
async fn graphql_get(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (mut parts, _body) = request.into_parts();
    let meter = parts
        .extensions
        .get::<Arc<WireMeter>>()
        .cloned()
        .unwrap_or_default();
    match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(upgrade) => match state.admission.admit(&parts.headers) {
            Ok(()) => websocket::upgrade(upgrade, state, peer.ip(), meter),
            Err(refusal) => refusal.into_response(),
        },
        Err(_) => Html(
            GraphiQLSource::build()
                .endpoint("/graphql")
                .subscription_endpoint("/graphql")
                .title("Tidewire GraphiQL")
                .finish(),
        )
        .into_response(),
    }
}

/// Whether the viewer's token must be refused: its session was revoked
/// (signOut, revokeSessions) or does not exist. Only tokens with a `sid`
/// (issued here) are checked; an error means the check could not be made,
/// and the caller refuses.
async fn viewer_revoked(
    state: &AppState,
    viewer: &crate::auth::Viewer,
) -> Result<bool, SessionCheckError> {
    match &viewer.session_id {
        Some(sid) => is_revoked(&state.pool, sid).await,
        None => Ok(false),
    }
}

async fn playground() -> Html<String> {
    Html(playground_source(
        GraphQLPlaygroundConfig::new("/graphql").subscription_endpoint("/graphql"),
    ))
}

async fn index() -> Html<&'static str> {
    Html(concat!(
        "<!doctype html><title>Tidewire</title>",
        "<h1>Tidewire</h1><p>Postgres changes as live GraphQL subscriptions.</p>",
        "<ul><li><a href=\"/graphql\">GraphiQL</a></li>",
        "<li><a href=\"/playground\">GraphQL Playground</a></li>",
        "<li><a href=\"/readyz\">readiness</a> · <a href=\"/metrics\">metrics</a></li></ul>"
    ))
}
