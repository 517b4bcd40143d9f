//! The accept loop: every TCP connection, HTTP or WebSocket, before the
//! router sees it.
//!
//! What a bare `axum::serve` does not bound is bounded here:
//! - connections per client address (`--max-connections-per-address`),
//!   counted for as long as the connection lives, upgraded or not; one over
//!   the cap gets `429` and is closed;
//! - time to send a request's headers, and idle time between keep-alive
//!   requests (`--http-read-timeout`, hyper's header-read timer);
//! - bytes and time a WebSocket client spends on one message
//!   ([`WireMeter`]): a message of endless empty continuation frames, or
//!   one that arrives a byte a minute, is cut off.

use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock, PoisonError,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{body::Body, extract::ConnectInfo, Router};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tower_service::Service;

/// Limits the accept loop enforces.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections one client address may hold open, of any kind.
    pub per_address: usize,
    /// Time to send a request's headers; also the keep-alive idle limit.
    pub read_timeout: Duration,
}

/// How long shutdown waits for plain HTTP connections to finish.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let open = Arc::new(Slots::new(limits.per_address));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a clone; all gone = all connections done.
    let (done_tx, mut done_rx) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off
                    // instead of spinning on accept.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Some(slot) = Slot::take(&open, peer.ip()) else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let meter = Arc::new(WireMeter::default());
        let io = TokioIo::new(MeteredStream {
            stream,
            meter: meter.clone(),
            _slot: slot,
        });
        let router = router.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(meter.clone());
            router.clone().call(request)
        });
        let mut stop = stop_rx.clone();
        let done = done_tx.clone();
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.read_timeout)
                .serve_connection(io, service)
                .with_upgrades();
            tokio::pin!(connection);
            let stopping = async move {
                let _ = stop.wait_for(|stop| *stop).await;
            };
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stopping => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(done);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_tx);
    // Upgraded connections (WebSockets) left hyper already; their own
    // shutdown is the server's business.
    let _ = tokio::time::timeout(DRAIN, done_rx.changed()).await;
}

/// Answers a connection over the per-address cap and closes it.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = "too many connections from this address\n";
    let response = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        stream.write_all(response.as_bytes()),
    )
    .await;
}

/// Counts open connections per key, up to a limit.
#[derive(Debug)]
pub(super) struct Slots<K> {
    limit: usize,
    open: Mutex<HashMap<K, usize>>,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    pub(super) fn new(limit: usize) -> Self {
        Slots {
            limit,
            open: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn take(&self, key: &K) -> bool {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= self.limit {
            if *count == 0 {
                open.remove(key);
            }
            return false;
        }
        *count += 1;
        true
    }

    pub(super) fn keys(&self) -> Vec<K> {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    pub(super) fn give_back(&self, key: &K) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                open.remove(key);
            }
        }
    }
}

/// One connection counted against its address; given back on drop.
struct Slot {
    slots: Arc<Slots<IpAddr>>,
    address: IpAddr,
}

impl Slot {
    fn take(slots: &Arc<Slots<IpAddr>>, address: IpAddr) -> Option<Slot> {
        slots.take(&address).then(|| Slot {
            slots: slots.clone(),
            address,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.give_back(&self.address);
    }
}

/// Bytes and time a WebSocket client spends on the message it is sending.
///
/// The WebSocket library bounds a message's payload, but not its frames: a
/// message of empty continuation frames never grows and never ends. This
/// meter sits on the socket itself, under the WebSocket layer, and counts
/// every byte read since the last complete message; the WebSocket reader
/// resets it on each message.
#[derive(Debug, Default)]
pub(super) struct WireMeter {
    /// Most bytes one message may take on the wire; 0 = not a WebSocket
    /// (plain HTTP is bounded elsewhere).
    limit: AtomicUsize,
    /// Bytes read since the last complete message.
    pending: AtomicUsize,
    /// When the first of those bytes arrived (ms since [`epoch`]), 0 = none.
    since: AtomicU64,
}

/// The meter's error when a message takes more than its share of bytes.
#[derive(Debug, thiserror::Error)]
#[error("a WebSocket message took more than {0} bytes on the wire")]
pub(super) struct WireLimitExceeded(usize);

impl WireMeter {
    /// Starts metering with `limit` bytes per message (after the upgrade).
    pub(super) fn arm(&self, limit: usize) {
        self.limit.store(limit.max(1), Ordering::Relaxed);
    }

    /// A complete message arrived.
    pub(super) fn message_done(&self) {
        self.pending.store(0, Ordering::Relaxed);
        self.since.store(0, Ordering::Relaxed);
    }

    /// A control frame (ping, pong) with `payload` bytes arrived: its bytes
    /// leave the count, and if nothing else is pending no message is under
    /// way.
    pub(super) fn control_frame(&self, payload: usize) {
        // Header, length and mask of a client frame.
        let wire = payload + if payload < 126 { 6 } else { 8 };
        let left = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |pending| {
                Some(pending.saturating_sub(wire))
            })
            .map_or(0, |before| before.saturating_sub(wire));
        if left == 0 {
            self.since.store(0, Ordering::Relaxed);
        }
    }

    /// How long the client has been sending its current message, if it is
    /// sending one.
    pub(super) fn message_age(&self) -> Option<Duration> {
        match self.since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(now_ms().saturating_sub(since))),
        }
    }

    fn count(&self, bytes: usize) -> Result<(), WireLimitExceeded> {
        let limit = self.limit.load(Ordering::Relaxed);
        if limit == 0 || bytes == 0 {
            return Ok(());
        }
        let before = self.pending.fetch_add(bytes, Ordering::Relaxed);
        if before == 0 {
            self.since.store(now_ms().max(1), Ordering::Relaxed);
        }
        if before + bytes > limit {
            return Err(WireLimitExceeded(limit));
        }
        Ok(())
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// A TCP stream that feeds its [`WireMeter`] and holds its address slot
/// for as long as the connection lives (through a WebSocket upgrade too).
struct MeteredStream {
    stream: TcpStream,
    meter: Arc<WireMeter>,
    _slot: Slot,
}

impl AsyncRead for MeteredStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let read = buf.filled().len() - before;
            if let Err(exceeded) = this.meter.count(read) {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, exceeded)));
            }
        }
        result
    }
}

impl AsyncWrite for MeteredStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meter_counts_only_once_armed_and_resets_per_message() {
        let meter = WireMeter::default();
        assert!(meter.count(10_000).is_ok(), "plain HTTP is not metered");
        assert_eq!(meter.message_age(), None);
        meter.arm(100);
        assert!(meter.count(60).is_ok());
        assert!(meter.message_age().is_some());
        meter.message_done();
        assert_eq!(meter.message_age(), None);
        assert!(meter.count(60).is_ok());
        assert!(meter.count(60).is_err(), "120 bytes without a message");
    }

    #[test]
    fn slots_are_counted_per_key_and_given_back() {
        let slots = Arc::new(Slots::new(2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = Slot::take(&slots, a).unwrap();
        let _second = Slot::take(&slots, a).unwrap();
        assert!(Slot::take(&slots, a).is_none());
        assert!(
            Slot::take(&slots, b).is_some(),
            "other addresses unaffected"
        );
        drop(first);
        assert!(Slot::take(&slots, a).is_some());
    }
}
