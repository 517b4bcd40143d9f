//! `Outbox`: a WebSocket's outgoing frames, queued behind a byte budget
//! and written by their own task, several frames per flush.
//!
//! While a connection holds `--max-queued-bytes` unsent, its producers (the
//! subscription tasks) wait: a slow client's subscriptions stop pulling and
//! later read the log from their cursors instead of growing this queue.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{stream::SplitSink, SinkExt};
use tokio::{
    sync::{mpsc, OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
};

/// A frame on its way out, holding its share of the connection's budget.
pub(super) struct Outgoing {
    message: Message,
    _permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

/// The sending side of a connection's bounded outgoing queue.
#[derive(Clone)]
pub(super) struct Outbox {
    /// Boxed frames: the channel allocates its slots up front, and a slot
    /// per pointer keeps an idle connection small.
    queue: mpsc::Sender<Box<Outgoing>>,
    budget: Arc<Semaphore>,
    limit: usize,
    /// Outgoing bytes queued over all connections (a metric).
    queued_bytes: Arc<AtomicUsize>,
}

/// The connection is closing; stop producing.
pub(super) struct Closed;

impl Outbox {
    /// Queues a frame, waiting while the connection has `limit` bytes unsent.
    pub(super) async fn send(&self, message: Message) -> Result<(), Closed> {
        let bytes = match &message {
            Message::Text(text) => text.len(),
            Message::Binary(bytes) => bytes.len(),
            _ => 0,
        };
        // A frame larger than the whole budget goes alone.
        let wanted = bytes.clamp(1, self.limit) as u32;
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(wanted)
            .await
            .map_err(|_| Closed)?;
        self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        let frame = Box::new(Outgoing {
            message,
            _permit: Some(permit),
            bytes,
        });
        self.queue.send(frame).await.map_err(|_| Closed)
    }

    pub(super) async fn text(&self, text: String) -> Result<(), Closed> {
        self.send(Message::Text(text.into())).await
    }

    /// Queues the close frame behind what is queued, if there is room.
    pub(super) fn close(&self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = self.queue.try_send(Box::new(Outgoing {
            message: Message::Close(Some(frame)),
            _permit: None,
            bytes: 0,
        }));
    }
}

impl Outbox {
    /// The outbox of a socket's `sink`, and the task that writes it.
    /// `limit`: outgoing bytes this connection may have unsent;
    /// `queued_bytes`: the metric over all connections.
    /// `write_timeout`: the longest one batch may take to write; a client
    /// that stops reading for longer (a zero TCP window) loses the
    /// connection instead of holding it, its slot and its subscriptions.
    pub(super) fn open(
        sink: SplitSink<WebSocket, Message>,
        limit: usize,
        queued_bytes: Arc<AtomicUsize>,
        write_timeout: Duration,
    ) -> (Outbox, JoinHandle<()>) {
        let limit = limit.max(1);
        // The byte budget bounds the queue; the count is a backstop for tiny
        // frames.
        let (queue, frames) = mpsc::channel(1024);
        let outbox = Outbox {
            queue,
            budget: Arc::new(Semaphore::new(limit)),
            limit,
            queued_bytes: queued_bytes.clone(),
        };
        (
            outbox,
            tokio::spawn(write_frames(sink, frames, queued_bytes, write_timeout)),
        )
    }
}

async fn write_frames(
    mut sink: SplitSink<WebSocket, Message>,
    mut frames: mpsc::Receiver<Box<Outgoing>>,
    queued_bytes: Arc<AtomicUsize>,
    write_timeout: Duration,
) {
    let mut failed = false;
    while let Some(frame) = frames.recv().await {
        let mut batch = vec![frame];
        // Write what is queued together, flushing once.
        while batch.len() < 64 {
            match frames.try_recv() {
                Ok(frame) => batch.push(frame),
                Err(_) => break,
            }
        }
        let bytes: usize = batch.iter().map(|f| f.bytes).sum();
        if !failed {
            let mut permits = Vec::with_capacity(batch.len());
            let write = async {
                for frame in batch {
                    permits.push(frame._permit);
                    sink.feed(frame.message).await?;
                }
                sink.flush().await
            };
            let written = matches!(tokio::time::timeout(write_timeout, write).await, Ok(Ok(())));
            drop(permits);
            if !written {
                // The client is gone: keep draining so producers end.
                failed = true;
                frames.close();
            }
        }
        queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
    let _ = tokio::time::timeout(write_timeout, sink.close()).await;
}
