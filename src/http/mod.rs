//! HTTP: one router for GraphQL (POST, GraphiQL, WebSocket), the
//! playground, health, readiness and metrics.

mod admission;
mod health;
mod outbox;
pub mod presence;
pub mod protocol;
mod rate_limit;
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
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::{
    extract::{ConnectInfo, FromRequestParts, Request, State, WebSocketUpgrade},
    http::{header, HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
    routing::get,
    Router,
};
use deadpool_postgres::Pool;
use tokio::sync::{broadcast, mpsc, watch};

pub use admission::Admission;
pub use rate_limit::RateLimiter;

use crate::{
    auth::{AuthError, Verifier},
    db::{ListenerStatus, Revocation},
    domains::countdown::Countdowns,
    domains::dashboard::Traffic,
    error::with_codes,
    fanout::Fanout,
    graphql::TidewireSchema,
    hub::Hub,
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
    /// Subscriptions running over all connections (a metric).
    pub subscriptions: Arc<AtomicUsize>,
    pub max_message_bytes: usize,
    /// Per-connection bound on outgoing bytes not yet written.
    pub max_queued_bytes: usize,
    /// Outgoing bytes queued over all connections (a metric).
    pub queued_bytes: Arc<AtomicUsize>,
    pub keepalive: Duration,
    /// A connection that sends no `connection_init` this soon is closed
    /// with 4408.
    pub init_timeout: Duration,
    /// Shared executions of identical subscriptions.
    pub fanout: Arc<Fanout>,
    /// Running countdowns (a metric).
    pub countdowns: Arc<Countdowns>,
    /// Subscriptions one connection may run at once.
    pub max_subscriptions: usize,
    /// Requests served (for the dashboard's rate).
    pub traffic: Arc<Traffic>,
    /// Verifies the tokens of HTTP requests and WebSocket connections.
    pub verifier: Arc<Verifier>,
    /// Session revocations heard by this node's listener.
    pub revocations: broadcast::Sender<Revocation>,
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
    headers: HeaderMap,
    request: GraphQLRequest,
) -> Response {
    state.traffic.count();
    let mut request = request.into_inner().data(peer.ip());
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let verified = value
            .to_str()
            .map_err(|_| AuthError::NotBearer)
            .and_then(|value| state.verifier.verify_bearer(value));
        let verified = match verified {
            Ok(viewer) if viewer_revoked(&state, &viewer).await => Err(AuthError::Revoked),
            other => other,
        };
        match verified {
            Ok(viewer) => request = request.data(viewer),
            Err(error) => {
                let body = serde_json::json!({
                    "errors": [{"message": error.to_string(), "extensions": {"code": "UNAUTHENTICATED"}}]
                });
                return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
            }
        }
    }
    GraphQLResponse::from(with_codes(state.schema.execute(request).await)).into_response()
}

/// A WebSocket upgrade starts a subscription socket; a browser gets GraphiQL.
async fn graphql_get(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (mut parts, _body) = request.into_parts();
    match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(upgrade) => match state.admission.admit(&parts.headers, peer.ip()) {
            Ok(ticket) => websocket::upgrade(upgrade, state, ticket),
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

/// Whether the viewer's session was revoked (signOut, revokeSessions).
async fn viewer_revoked(state: &AppState, viewer: &crate::auth::Viewer) -> bool {
    match &viewer.session_id {
        Some(sid) => crate::domains::accounts::is_revoked(&state.pool, sid).await,
        None => false,
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
