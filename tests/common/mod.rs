//! Shared harness: one embedded Postgres per test binary, one database and
//! one server (on port 0) per test, and a real graphql-transport-ws client.

#![allow(dead_code, unreachable_pub)]

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        OnceLock,
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tidewire::{
    config::Config,
    db::{
        connect_once,
        embedded::{EmbeddedOptions, EmbeddedPostgres},
        ensure_database,
    },
    server::App,
};
use tokio::{net::TcpStream, sync::oneshot, task::JoinHandle};
use tokio_tungstenite::{
    tungstenite::{client::IntoClientRequest, http::HeaderValue, Message},
    MaybeTlsStream, WebSocketStream,
};

/// How long a test waits for an expected message before failing.
pub const WAIT: Duration = Duration::from_secs(10);

static CLUSTER: OnceLock<EmbeddedPostgres> = OnceLock::new();
static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// The test binary's Postgres, started on first use. Its guardian stops it
/// and deletes its folder when the test process exits.
pub fn cluster() -> &'static EmbeddedPostgres {
    CLUSTER.get_or_init(|| {
        let data_dir = std::env::temp_dir().join(format!("tidewire-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        EmbeddedPostgres::start(&EmbeddedOptions {
            data_dir,
            ephemeral: true,
        })
        .expect("starting the embedded Postgres for tests")
    })
}

/// A fresh database in the test cluster.
pub async fn fresh_database() -> String {
    let pg = cluster();
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed)
    );
    ensure_database(&pg.url("postgres"), &name)
        .await
        .expect("creating a test database");
    pg.url(&name)
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub database_url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server on its own database, with `adjust` applied to the
    /// default configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let database_url = fresh_database().await;
        Self::start_on(database_url, adjust).await
    }

    /// Starts a server on an existing database (e.g. a restart).
    pub async fn start_on(database_url: String, adjust: impl FnOnce(&mut Config)) -> TestServer {
        Self::start_at(database_url, SocketAddr::from(([127, 0, 0, 1], 0)), adjust).await
    }

    /// Like [`TestServer::start_on`], listening on `addr` (e.g. the address
    /// of a server just shut down, so its clients reconnect to the same URL).
    pub async fn start_at(
        database_url: String,
        addr: SocketAddr,
        adjust: impl FnOnce(&mut Config),
    ) -> TestServer {
        let mut config = Config::for_database(database_url.clone());
        adjust(&mut config);
        let app = App::prepare(config).await.expect("preparing the server");
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.serve(listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("serving");
        });
        let server = TestServer {
            addr,
            database_url,
            stop: Some(stop),
            task: Some(task),
        };
        server.wait_ready().await;
        server
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Polls `/readyz` until it says ready.
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.ready().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "server never became ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn ready(&self) -> bool {
        reqwest::get(self.url("/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// A direct database connection, as an application writing rows has.
    pub async fn db(&self) -> tokio_postgres::Client {
        connect_once(&self.database_url)
            .await
            .expect("connecting to the test database")
    }

    /// Creates the table most reliability tests use, `events (id bigint
    /// PRIMARY KEY)`, and tracks it.
    pub async fn track_events(&self) {
        self.sql("CREATE TABLE events (id bigint PRIMARY KEY); SELECT tidewire.track('events', public => true);")
            .await;
    }

    /// A client with subscription `e` on `events`, registered in the hub.
    pub async fn subscribe_events(&self) -> GqlClient {
        let mut client = self.ws().await;
        client
            .subscribe("e", CHANGES, json!({"table": "events"}))
            .await;
        wait_for_subscribers(self, 1).await;
        client
    }

    /// Inserts ids 1..=rows into `events`, one commit each, pausing `pause`
    /// after every `every` rows.
    pub async fn write_events(&self, rows: i64, every: i64, pause: Duration) -> JoinHandle<()> {
        let db = self.db().await;
        tokio::spawn(async move {
            for id in 1..=rows {
                db.execute("INSERT INTO events VALUES ($1)", &[&id])
                    .await
                    .unwrap();
                if id % every == 0 {
                    tokio::time::sleep(pause).await;
                }
            }
        })
    }

    pub async fn sql(&self, statements: &str) {
        self.db()
            .await
            .batch_execute(statements)
            .await
            .expect(statements);
    }

    /// A graphql-transport-ws client past `connection_init`.
    pub async fn ws(&self) -> GqlClient {
        GqlClient::connect(self.addr, "graphql-transport-ws").await
    }

    /// A legacy `graphql-ws` (subscriptions-transport-ws) client.
    pub async fn ws_legacy(&self) -> GqlClient {
        GqlClient::connect(self.addr, "graphql-ws").await
    }

    pub async fn post(&self, query: &str, variables: Value) -> Value {
        reqwest::Client::new()
            .post(self.url("/graphql"))
            .json(&json!({"query": query, "variables": variables}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// POST with `Authorization: Bearer <token>`; the HTTP status and body.
    pub async fn post_as(&self, token: &str, query: &str) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(self.url("/graphql"))
            .header("authorization", format!("Bearer {token}"))
            .json(&json!({"query": query}))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// POST a GraphQL request, as `token` or anonymously; the body.
    pub async fn graphql(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let mut request = reqwest::Client::new().post(self.url("/graphql"));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = json!({"query": query, "variables": variables});
        request
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }

    /// Graceful shutdown; waits until the server has stopped.
    pub async fn shutdown(mut self) {
        self.stop.take().map(|s| s.send(()));
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("server did not stop in time")
                .expect("server task failed");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.take().map(|s| s.send(()));
    }
}

/// A JWT for `sub` with `role`, valid for `expires_in` seconds, signed
/// HS256 with `secret`.
pub fn token(secret: &str, sub: &str, role: &str, expires_in: i64) -> String {
    let claims = json!({"sub": sub, "role": role, "exp": tidewire::auth::now() + expires_in});
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// Like [`token`], but naming session `sid`, as the tokens of `signIn` do.
pub fn session_token(secret: &str, sub: &str, role: &str, sid: &str, expires_in: i64) -> String {
    let claims = json!({
        "sub": sub, "role": role, "sid": sid, "exp": tidewire::auth::now() + expires_in,
    });
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// A client past `connection_init` with `token`.
pub async fn client_with_token(addr: SocketAddr, token: &str) -> GqlClient {
    let authorization = format!("Bearer {token}");
    let mut client = GqlClient::init_with(addr, json!({ "authorization": authorization })).await;
    assert_eq!(client.next_message().await["type"], "connection_ack");
    client
}

/// Waits until `n` subscriptions run, each with a feed registered in the
/// hub (all of different shapes, so none share an execution).
pub async fn wait_for_subscribers(server: &TestServer, n: usize) {
    wait_for_shared_subscribers(server, n, n).await;
}

/// Waits until `clients` subscriptions run over `feeds` hub registrations
/// (identical subscriptions share one execution and one feed).
pub async fn wait_for_shared_subscribers(server: &TestServer, clients: usize, feeds: usize) {
    wait_for_metric(server, "tidewire_subscriptions", |v| v == clients as f64).await;
    wait_for_metric(server, "tidewire_hub_subscribers", |v| v == feeds as f64).await;
}

/// Inserts a row of 1 MiB into `table` (columns `id`, `body`) for each of
/// `ids`, waiting until `reader` receives it on subscription `sub`; returns
/// the highest value metric `name` showed meanwhile (what a stalled
/// subscriber made the server buffer).
pub async fn write_mebibyte_rows(
    server: &TestServer,
    table: &str,
    ids: std::ops::RangeInclusive<i64>,
    reader: &mut GqlClient,
    sub: &str,
    name: &str,
) -> f64 {
    let db = server.db().await;
    let insert = format!("INSERT INTO {table} VALUES ($1, repeat('y', 1 << 20))");
    let mut most = 0.0f64;
    for id in ids {
        db.execute(&insert, &[&id]).await.unwrap();
        assert_eq!(reader.next_item(sub, "changes").await["row"]["id"], id);
        most = most.max(server.metric(name).await);
    }
    most
}

/// Waits until metric `name` satisfies `ok`; returns its value.
pub async fn wait_for_metric(server: &TestServer, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value = server.metric(name).await;
        if ok(value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} stayed at {value}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A small deterministic pseudo-random generator (xorshift), so failing
/// runs can be repeated from the printed seed.
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("rng seed {seed}");
        Rng(seed)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// The subscription most tests use.
pub const CHANGES: &str = "subscription($table: String!, $where: JSON, $after: String) {
  changes(table: $table, where: $where, after: $after) { cursor table op row oldRow committedAt }
}";

/// A real WebSocket client speaking either GraphQL subprotocol.
pub struct GqlClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    legacy: bool,
    /// Messages for other subscriptions, read while waiting for one.
    pending: VecDeque<Value>,
}

impl GqlClient {
    pub async fn connect(addr: SocketAddr, protocol: &str) -> GqlClient {
        let mut client = Self::open(addr, protocol).await;
        client
            .send(json!({"type": "connection_init", "payload": {}}))
            .await;
        let ack = client.next_message().await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        client
    }

    /// Opens a socket and sends `connection_init` with `payload`, without
    /// waiting for the answer.
    pub async fn init_with(addr: SocketAddr, payload: Value) -> GqlClient {
        let mut client = Self::open(addr, "graphql-transport-ws").await;
        client
            .send(json!({"type": "connection_init", "payload": payload}))
            .await;
        client
    }

    /// A client whose socket has a tiny receive buffer, so that not reading
    /// stalls the server quickly (a slow consumer).
    pub async fn connect_small_buffer(addr: SocketAddr) -> GqlClient {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let mut client = Self::handshake(addr, "graphql-transport-ws", stream).await;
        client
            .send(json!({"type": "connection_init", "payload": {}}))
            .await;
        let ack = client.next_message().await;
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        client
    }

    /// Opens the socket without `connection_init`.
    pub async fn open(addr: SocketAddr, protocol: &str) -> GqlClient {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        Self::handshake(addr, protocol, stream).await
    }

    /// Attempts the WebSocket handshake with extra request headers; the HTTP
    /// status on refusal.
    pub async fn try_open(addr: SocketAddr, headers: &[(&str, &str)]) -> Result<GqlClient, u16> {
        let mut request = format!("ws://{addr}/graphql")
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("graphql-transport-ws"),
        );
        for (name, value) in headers {
            let name =
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .unwrap();
            request
                .headers_mut()
                .insert(name, HeaderValue::from_str(value).unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => Ok(GqlClient {
                ws,
                legacy: false,
                pending: VecDeque::new(),
            }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(error) => panic!("handshake failed: {error}"),
        }
    }

    async fn handshake(addr: SocketAddr, protocol: &str, stream: TcpStream) -> GqlClient {
        let mut request = format!("ws://{addr}/graphql")
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(protocol).unwrap(),
        );
        let (ws, response) =
            tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
                .await
                .expect("websocket connect");
        assert_eq!(
            response.headers().get("sec-websocket-protocol").unwrap(),
            protocol
        );
        GqlClient {
            ws,
            legacy: protocol == "graphql-ws",
            pending: VecDeque::new(),
        }
    }

    /// Sends raw text, valid JSON or not.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.unwrap();
    }

    pub async fn send(&mut self, message: Value) {
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .unwrap();
    }

    pub async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        let kind = if self.legacy { "start" } else { "subscribe" };
        self.send(
            json!({"id": id, "type": kind, "payload": {"query": query, "variables": variables}}),
        )
        .await;
    }

    pub async fn complete(&mut self, id: &str) {
        let kind = if self.legacy { "stop" } else { "complete" };
        self.send(json!({"id": id, "type": kind})).await;
    }

    /// The next protocol message, answering pings and skipping keep-alives.
    pub async fn next_message(&mut self) -> Value {
        self.try_next_message(WAIT)
            .await
            .expect("no message in time")
    }

    /// The next protocol message within `wait`, or `None`.
    pub async fn try_next_message(&mut self, wait: Duration) -> Option<Value> {
        match self.pending.pop_front() {
            Some(message) => Some(message),
            None => self.read_message(wait).await,
        }
    }

    /// The next protocol message from the socket itself.
    async fn read_message(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match frame.expect("socket closed").expect("socket error") {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    match value["type"].as_str() {
                        Some("ka") => continue,
                        Some("ping") => self.send(json!({"type": "pong"})).await,
                        _ => return Some(value),
                    }
                }
                Message::Close(frame) => panic!("socket closed: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// The next result for subscription `id`: its `payload` (data and/or
    /// errors).
    pub async fn next_payload(&mut self, id: &str) -> Value {
        let message = self.next_for(id).await;
        match message["type"].as_str() {
            Some("next" | "data") => message["payload"].clone(),
            // graphql-transport-ws: the operation failed before any result.
            Some("error") => json!({ "errors": message["payload"] }),
            _ => panic!("unexpected message for {id}: {message}"),
        }
    }

    /// The next message for operation `id` (others read meanwhile wait
    /// their turn).
    pub async fn next_for(&mut self, id: &str) -> Value {
        match self.pending.iter().position(|m| m["id"] == id) {
            Some(i) => self.pending.remove(i).unwrap(),
            None => loop {
                let message = self.read_message(WAIT).await.expect("no message in time");
                if message["id"] == id {
                    break message;
                }
                self.pending.push_back(message);
            },
        }
    }

    /// Runs a query or mutation over the socket as operation `id`: its
    /// one result's payload, after which the server completes it.
    pub async fn request(&mut self, id: &str, query: &str, variables: Value) -> Value {
        self.subscribe(id, query, variables).await;
        let payload = self.next_payload(id).await;
        if payload.get("data").is_some() {
            let complete = self.next_for(id).await;
            assert_eq!(complete["type"], "complete", "{complete}");
        }
        payload
    }

    /// The next data item of subscription `id` under `field`; fails on errors.
    pub async fn next_item(&mut self, id: &str, field: &str) -> Value {
        let payload = self.next_payload(id).await;
        assert!(payload.get("errors").is_none(), "errors: {payload}");
        payload["data"][field].clone()
    }

    /// Reads what arrives within `wait`; true if the socket closed.
    pub async fn try_next_message_or_close(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return false,
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Messages still arriving until the server closes the socket.
    pub async fn until_closed(&mut self) -> Vec<Value> {
        let mut messages: Vec<Value> = self.pending.drain(..).collect();
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no close in time")
            {
                Some(Ok(Message::Text(text))) => {
                    messages.push(serde_json::from_str(&text).unwrap())
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return messages,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Waits for the close frame; returns its code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no close in time")
            {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (frame.code.into(), frame.reason.to_string())
                }
                Some(Ok(Message::Close(None))) | None => return (1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("socket error before close: {e}"),
            }
        }
    }

    /// Asserts no message for `id` arrives within `wait`.
    pub async fn assert_quiet(&mut self, wait: Duration) {
        if let Some(message) = self.try_next_message(wait).await {
            panic!("expected silence, got {message}");
        }
    }
}
