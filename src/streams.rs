//! Stream operators for subscriptions: throttle, debounce, batch, and an
//! end imposed from outside.
//!
//! Each wraps any stream and ends when it ends, flushing what it holds. They
//! hold at most one item (throttle, debounce) or `max_size` items (batch), so
//! none of them can grow without bound.

use std::{pin::Pin, time::Duration};

use futures_util::{stream, Stream, StreamExt};
use tokio::time::{sleep_until, Instant};

type Boxed<T> = Pin<Box<dyn Stream<Item = T> + Send>>;

/// A subscription's `throttleMs` / `debounceMs` arguments applied to its
/// stream (debounce first: throttling a debounced stream keeps both
/// promises). Zero or absent means off.
pub fn pace<T: Send + 'static>(
    source: impl Stream<Item = T> + Send + 'static,
    throttle_ms: Option<i32>,
    debounce_ms: Option<i32>,
) -> Boxed<T> {
    let window = |ms: Option<i32>| {
        ms.filter(|ms| *ms > 0)
            .map(|ms| Duration::from_millis(ms as u64))
    };
    let source: Boxed<T> = match window(debounce_ms) {
        Some(quiet) => Box::pin(debounce(source, quiet)),
        None => Box::pin(source),
    };
    match window(throttle_ms) {
        Some(interval) => Box::pin(throttle(source, interval)),
        None => source,
    }
}

/// `source` until `end` resolves, then `end`'s error as the last item.
/// `hold` lives as long as the stream (what the stream keeps reserved).
pub fn until_ended<T: Send + 'static, H: Send + 'static>(
    source: impl Stream<Item = async_graphql::Result<T>> + Send + 'static,
    end: futures_util::future::BoxFuture<'static, async_graphql::Error>,
    hold: H,
) -> Boxed<async_graphql::Result<T>> {
    let source: Boxed<async_graphql::Result<T>> = Box::pin(source);
    Box::pin(stream::unfold(
        Some((source, end, hold)),
        |state| async move {
            let (mut source, mut end, hold) = state?;
            tokio::select! {
                biased;
                error = &mut end => Some((Err(error), None)),
                item = source.next() => item.map(|item| (item, Some((source, end, hold)))),
            }
        },
    ))
}

/// At most one item per `interval`: the first at once, then, at the end of
/// each interval, the newest item that arrived during it (older ones are
/// dropped, so a throttled stream is never stale).
pub fn throttle<T: Send + 'static>(
    source: impl Stream<Item = T> + Send + 'static,
    interval: Duration,
) -> impl Stream<Item = T> + Send {
    struct State<T> {
        source: Boxed<T>,
        pending: Option<T>,
        /// When the next item may go out.
        open_at: Instant,
        ended: bool,
    }
    let state = State {
        source: Box::pin(source),
        pending: None,
        open_at: Instant::now(),
        ended: false,
    };
    stream::unfold(state, move |mut s| async move {
        loop {
            if s.ended {
                let last = s.pending.take()?;
                return Some((last, s));
            }
            if s.pending.is_none() {
                let item = match s.source.next().await {
                    Some(item) => item,
                    None => return None,
                };
                let now = Instant::now();
                if now >= s.open_at {
                    s.open_at = now + interval;
                    return Some((item, s));
                }
                s.pending = Some(item);
                continue;
            }
            tokio::select! {
                item = s.source.next() => match item {
                    Some(item) => s.pending = Some(item),
                    None => s.ended = true,
                },
                _ = sleep_until(s.open_at) => {
                    s.open_at = Instant::now() + interval;
                    let item = s.pending.take()?;
                    return Some((item, s));
                }
            }
        }
    })
}

/// Emits the newest item once the source has been quiet for `window`.
pub fn debounce<T: Send + 'static>(
    source: impl Stream<Item = T> + Send + 'static,
    window: Duration,
) -> impl Stream<Item = T> + Send {
    struct State<T> {
        source: Boxed<T>,
        pending: Option<T>,
        quiet_at: Instant,
        ended: bool,
    }
    let state = State {
        source: Box::pin(source),
        pending: None,
        quiet_at: Instant::now(),
        ended: false,
    };
    stream::unfold(state, move |mut s| async move {
        loop {
            if s.ended {
                let last = s.pending.take()?;
                return Some((last, s));
            }
            if s.pending.is_none() {
                let item = s.source.next().await?;
                s.pending = Some(item);
                s.quiet_at = Instant::now() + window;
                continue;
            }
            tokio::select! {
                item = s.source.next() => match item {
                    Some(item) => {
                        s.pending = Some(item);
                        s.quiet_at = Instant::now() + window;
                    }
                    None => s.ended = true,
                },
                _ = sleep_until(s.quiet_at) => {
                    let item = s.pending.take()?;
                    return Some((item, s));
                }
            }
        }
    })
}

/// Groups items: a batch goes out once it holds `max_size` items, or
/// `max_wait` after its first item arrived; what is left goes out when the
/// source ends. Batches are never empty.
pub fn batch<T: Send + 'static>(
    source: impl Stream<Item = T> + Send + 'static,
    max_size: usize,
    max_wait: Duration,
) -> impl Stream<Item = Vec<T>> + Send {
    struct State<T> {
        source: Boxed<T>,
        items: Vec<T>,
        due: Instant,
        ended: bool,
    }
    let max_size = max_size.max(1);
    let state = State {
        source: Box::pin(source),
        items: Vec::new(),
        due: Instant::now(),
        ended: false,
    };
    stream::unfold(state, move |mut s| async move {
        loop {
            if s.items.len() >= max_size || (s.ended && !s.items.is_empty()) {
                let full = std::mem::take(&mut s.items);
                return Some((full, s));
            }
            if s.ended {
                return None;
            }
            if s.items.is_empty() {
                match s.source.next().await {
                    Some(item) => {
                        s.items.push(item);
                        s.due = Instant::now() + max_wait;
                    }
                    None => s.ended = true,
                }
                continue;
            }
            tokio::select! {
                item = s.source.next() => match item {
                    Some(item) => s.items.push(item),
                    None => s.ended = true,
                },
                _ = sleep_until(s.due) => {
                    let due = std::mem::take(&mut s.items);
                    return Some((due, s));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    /// A source fed by the test, and a collector that records what came out
    /// and when (in ms since the start, on tokio's paused clock).
    fn source() -> (mpsc::Sender<u32>, impl Stream<Item = u32> + Send + 'static) {
        let (tx, mut rx) = mpsc::channel(64);
        (tx, stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    fn spawn_collect<T: Send + 'static>(
        out: impl Stream<Item = T> + Send + 'static,
    ) -> tokio::task::JoinHandle<Vec<(u64, T)>> {
        let start = Instant::now();
        tokio::spawn(async move {
            out.map(|item| (start.elapsed().as_millis() as u64, item))
                .collect()
                .await
        })
    }

    async fn at(ms: u64, tx: &mpsc::Sender<u32>, value: u32, start: Instant) {
        tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
        tx.send(value).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_sends_the_first_at_once_then_the_newest_per_interval() {
        let (tx, input) = source();
        let out = spawn_collect(throttle(input, Duration::from_millis(100)));
        let t0 = Instant::now();
        at(0, &tx, 1, t0).await;
        at(10, &tx, 2, t0).await;
        at(20, &tx, 3, t0).await; // newest of the first interval
        at(150, &tx, 4, t0).await;
        at(160, &tx, 5, t0).await;
        at(400, &tx, 6, t0).await; // after a quiet spell: at once
        drop(tx);
        let got = out.await.unwrap();
        assert_eq!(got, vec![(0, 1), (100, 3), (200, 5), (400, 6)]);
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_flushes_the_newest_when_the_source_ends() {
        let (tx, input) = source();
        let out = spawn_collect(throttle(input, Duration::from_millis(100)));
        let t0 = Instant::now();
        at(0, &tx, 1, t0).await;
        at(10, &tx, 2, t0).await;
        drop(tx);
        let got: Vec<u32> = out.await.unwrap().into_iter().map(|(_, v)| v).collect();
        assert_eq!(got, vec![1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn debounce_waits_for_quiet() {
        let (tx, input) = source();
        let out = spawn_collect(debounce(input, Duration::from_millis(50)));
        let t0 = Instant::now();
        at(0, &tx, 1, t0).await;
        at(30, &tx, 2, t0).await;
        at(60, &tx, 3, t0).await; // quiet from 60 to 110
        at(200, &tx, 4, t0).await; // quiet from 200; flushed at the end
        drop(tx);
        let got = out.await.unwrap();
        assert_eq!(got, vec![(110, 3), (200, 4)]);
    }

    #[tokio::test(start_paused = true)]
    async fn batch_by_size_by_wait_and_at_the_end() {
        let (tx, input) = source();
        let out = spawn_collect(batch(input, 3, Duration::from_millis(100)));
        let t0 = Instant::now();
        for (ms, v) in [(0, 1), (1, 2), (2, 3)] {
            at(ms, &tx, v, t0).await; // full at 2 ms
        }
        at(10, &tx, 4, t0).await; // waits until 110 ms
        at(300, &tx, 5, t0).await;
        at(301, &tx, 6, t0).await;
        drop(tx); // flushes [5, 6] at once
        let got = out.await.unwrap();
        assert_eq!(
            got,
            vec![(2, vec![1, 2, 3]), (110, vec![4]), (301, vec![5, 6])]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_source_gives_nothing() {
        let (tx, input) = source();
        drop(tx);
        assert!(batch(input, 3, Duration::from_millis(10))
            .collect::<Vec<_>>()
            .await
            .is_empty());
    }
}
