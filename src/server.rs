//! `App`: connect, migrate and wire the parts together; then serve until
//! shutdown and stop in order: stop accepting, close WebSockets with 1001,
//! stop the listener.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{atomic::AtomicUsize, Arc},
    time::{Duration, Instant},
};

use deadpool_postgres::Pool;
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};

use crate::{
    auth::{Issuer, Verifier},
    config::Config,
    db::{
        connect_log_pool, connect_once, connect_pool, migrate, ChangeLog, DbError, Listener,
        ListenerStatus, PageLimit, Pruner, Watchdog, BUS_CHANNEL, REVOKED_CHANNEL,
    },
    domains::Limits,
    domains::{accounts::CredentialLimits, chat::Memberships, live_rows::SnapshotCache},
    fanout::{Fanout, GroupBuffer},
    graphql::{build_schema, sharing_rules, Services},
    http::{router, serve, Admission, AppState, ConnectionLimits, Operations, StreamLimits},
    hub::Hub,
    request_guard::QueryLimits,
    services::{presence, Bus, Countdowns, RateLimiter, Revocations, Rooms, Traffic},
};

/// Bytes one listener read may hold: pages of many subscribers' changes.
const LISTENER_PAGE_BYTES: i64 = 8 << 20;

/// How long shutdown waits for open WebSockets to say goodbye.
const SOCKET_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("no database: set DATABASE_URL (or run without it to use the embedded Postgres)")]
    NoDatabase,
    #[error("database unreachable after {waited:?}: {source}")]
    Unreachable { waited: Duration, source: DbError },
    /// A failure retrying cannot fix: a bad connection string, a wrong
    /// password, a database that does not exist, no permission to connect.
    #[error("cannot use the database: {error}")]
    Refused { error: DbError },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("authentication setup: {0}")]
    Auth(String),
    #[error("serving HTTP: {0}")]
    Io(#[from] std::io::Error),
}

/// A prepared service: database reachable, migrations applied.
pub struct App {
    config: Config,
    verifier: Arc<Verifier>,
    url: String,
    pool: Pool,
    log: ChangeLog,
    hub: Arc<Hub>,
}

impl App {
    /// Connects (retrying with backoff up to `connect_timeout`), applies the
    /// migrations and builds the hub at the log's head.
    pub async fn prepare(config: Config) -> Result<App, ServerError> {
        let url = config.database_url.clone().ok_or(ServerError::NoDatabase)?;
        let public_key = match &config.jwt_public_key {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| ServerError::Auth(format!("reading {}: {e}", path.display())))?,
            ),
            None => None,
        };
        let verifier = Verifier::new(config.jwt_secret.as_deref(), public_key.as_deref())
            .map_err(ServerError::Auth)?;
        if config.jwt_secret.is_none() && public_key.is_none() {
            return Err(ServerError::Auth(
                "set TIDEWIRE_JWT_SECRET (32+ characters) or TIDEWIRE_JWT_PUBLIC_KEY; \
                 only the embedded development setup generates a secret"
                    .into(),
            ));
        }
        wait_for_database(&url, config.connect_timeout).await?;
        migrate(&url).await?;
        let pool = connect_pool(&url, config.pool_size, "tidewire")?;
        let log = ChangeLog::new(connect_log_pool(&url, config.pool_size)?);
        // Half the log pool for catch-up reads; the rest stays free for
        // subscription starts and pruning.
        let hub = Hub::new(
            config.topic_buffer,
            config.topic_buffer_bytes,
            log.head().await?,
            (config.pool_size / 2).max(1),
        );
        Ok(App {
            config,
            verifier: Arc::new(verifier),
            url,
            pool,
            log,
            hub,
        })
    }

    /// Serves on `listener` until `shutdown` completes, then stops in order.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let revocations = Revocations::new(1024);
        let bus = Bus::new(self.pool.clone());
        let rooms = Rooms::new(bus.node().clone());

        let stop_rx_presence = stop_rx.clone();
        let status = Arc::new(ListenerStatus::default());
        let listener_task = tokio::spawn(
            Listener {
                url: self.url.clone(),
                sink: self.hub.clone(),
                status: status.clone(),
                limit: PageLimit {
                    rows: self.config.log_page,
                    bytes: LISTENER_PAGE_BYTES,
                },
                backoff: self.config.listener_backoff,
                backoff_max: self.config.listener_backoff_max,
                notices: vec![
                    (REVOKED_CHANNEL, Arc::new(revocations.clone())),
                    (BUS_CHANNEL, rooms.clone()),
                ],
            }
            .run(stop_rx.clone()),
        );
        let watchdog_task = tokio::spawn(
            Watchdog {
                pool: self.pool.clone(),
                status: status.clone(),
                interval: self.config.watchdog_interval,
                stuck_after: self.config.stuck_after,
            }
            .run(stop_rx.clone()),
        );
        let pruner_task = tokio::spawn(
            Pruner {
                log: self.log.clone(),
                keep: self.config.retention,
                keep_commits: self.config.retention_commits,
                interval: self.config.prune_interval,
            }
            .run(stop_rx.clone()),
        );
        let query_limits = QueryLimits {
            max_bytes: self.config.max_query_bytes,
            max_nesting: self.config.max_query_nesting,
        };
        let countdowns = Arc::new(Countdowns::default());
        let traffic = Arc::new(Traffic::default());
        let page = PageLimit {
            rows: self.config.log_page,
            bytes: self.config.page_bytes,
        };
        let memberships = Memberships::new(self.hub.clone(), self.log.clone(), page);
        let live_snapshots = Arc::new(SnapshotCache::new(self.config.live_snapshot_cache_bytes));
        let services = Services {
            log: self.log.clone(),
            hub: self.hub.clone(),
            countdowns: countdowns.clone(),
            pool: self.pool.clone(),
            issuer: self
                .config
                .jwt_secret
                .as_deref()
                .map(|secret| Issuer::new(secret, self.config.token_ttl.as_secs() as i64)),
            rate_limiter: Arc::new(RateLimiter::new(self.config.mutations_per_second)),
            credential_limits: Arc::new(CredentialLimits::new(
                self.config.credential_attempts_per_address,
                self.config.credential_attempts_per_account,
            )),
            traffic: traffic.clone(),
            rooms: rooms.clone(),
            memberships: memberships.clone(),
            live_snapshots: live_snapshots.clone(),
        };
        let rules = sharing_rules(&services);
        let schema = build_schema(
            services,
            Limits {
                page,
                max_depth: self.config.max_depth,
                max_complexity: self.config.max_complexity,
                max_countdown: self.config.max_countdown,
                max_chat_message_chars: self.config.max_chat_message_chars,
                max_live_rows: self.config.max_live_rows,
                query: query_limits,
                max_where_bytes: self.config.max_where_bytes,
                max_where_conditions: self.config.max_where_conditions,
                max_where_in_values: self.config.max_where_in_values,
            },
        );
        let fanout = Fanout::new(
            schema.clone(),
            self.hub.clone(),
            GroupBuffer {
                items: self.config.group_buffer,
                bytes: self.config.group_buffer_bytes,
            },
            query_limits,
            rules,
        );
        let rooms_task = tokio::spawn(rooms.clone().run(bus, stop_rx.clone()));

        let (done_tx, mut done_rx) = mpsc::channel(1);
        let state = AppState {
            schema,
            pool: self.pool.clone(),
            listener: status,
            hub: self.hub.clone(),
            shutdown: stop_rx,
            sockets_done: done_tx,
            sockets: Arc::new(AtomicUsize::new(0)),
            max_message_bytes: self.config.max_message_bytes,
            max_body_bytes: self.config.max_body_bytes,
            http_read_timeout: self.config.http_read_timeout,
            ws_message_timeout: self.config.ws_message_timeout,
            metrics_token: self.config.metrics_token.clone(),
            max_queued_bytes: self.config.max_queued_bytes,
            queued_bytes: Arc::new(AtomicUsize::new(0)),
            keepalive: self.config.keepalive,
            init_timeout: self.config.init_timeout,
            max_subscriptions: self.config.max_subscriptions,
            traffic: traffic.clone(),
            verifier: self.verifier.clone(),
            revocations,
            admission: Arc::new(Admission::new(
                self.config.max_connections_per_user,
                own_origins(listener.local_addr()?, self.config.public_origin.as_deref())
                    .into_iter()
                    .chain(self.config.allowed_origins.iter().cloned()),
            )),
            operations: Arc::new(Operations {
                fanout,
                hub: self.hub.clone(),
                running: AtomicUsize::new(0),
            }),
            countdowns,
            rooms: rooms.clone(),
            memberships: memberships.clone(),
            live_snapshots,
            streams: Arc::new(StreamLimits {
                max_body_bytes: self.config.stream_max_body_bytes,
                max_line_bytes: self.config.stream_max_line_bytes,
                max_chunk_bytes: self.config.upload_max_chunk_bytes,
                idle_timeout: self.config.http_read_timeout,
                per_user: RateLimiter::per_minute(self.config.stream_requests_per_minute),
                // Each holds up to two pooled connections.
                running: Arc::new(tokio::sync::Semaphore::new(
                    (self.config.pool_size / 4).max(1),
                )),
                running_per_user: 2,
                users: Default::default(),
            }),
        };
        let admission = state.admission.clone();
        let presence_task = tokio::spawn(presence::run(
            self.pool.clone(),
            Arc::new(move || admission.connected_users()),
            traffic,
            stop_rx_presence,
        ));
        let limits = ConnectionLimits {
            per_address: self.config.max_connections_per_address,
            read_timeout: self.config.http_read_timeout,
        };
        serve(listener, router(state), limits, async move {
            shutdown.await;
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
        })
        .await;
        // Every socket task holds a sender clone: wait for them to close.
        if tokio::time::timeout(SOCKET_GRACE, done_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!("some WebSockets did not close in time");
        }
        let _ = tokio::join!(
            listener_task,
            watchdog_task,
            pruner_task,
            presence_task,
            rooms_task
        );
        self.pool.close();
        tracing::info!("stopped");
        Ok(())
    }
}

/// The origins of this server's own pages: `public` when configured, else
/// `http://` the bound address, with `localhost` and the loopback addresses
/// when it listens on loopback or on every interface.
fn own_origins(local: SocketAddr, public: Option<&str>) -> Vec<String> {
    if let Some(public) = public {
        return vec![public.to_owned()];
    }
    let port = local.port();
    let mut origins = Vec::new();
    if !local.ip().is_unspecified() {
        origins.push(format!("http://{local}"));
    }
    if local.ip().is_loopback() || local.ip().is_unspecified() {
        for host in ["localhost", "127.0.0.1", "[::1]"] {
            origins.push(format!("http://{host}:{port}"));
        }
    }
    origins
}

/// Connects once to check the database, retrying for `patience` while it
/// is out of reach (refused, timed out, starting up). Anything else, such
/// as a wrong password or a missing database, fails at once with what
/// Postgres said.
async fn wait_for_database(url: &str, patience: Duration) -> Result<(), ServerError> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        match connect_once(url).await {
            Ok(_) => return Ok(()),
            Err(error) if !error.is_unreachable() => return Err(ServerError::Refused { error }),
            Err(source) if started.elapsed() + delay > patience => {
                return Err(ServerError::Unreachable {
                    waited: started.elapsed(),
                    source,
                })
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "database unreachable, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
