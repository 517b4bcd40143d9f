//! `Subscription`: one operation a client started with `subscribe`, run as
//! its own task: alone, or as a member of a shared execution.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use async_graphql::{Pos, Request, Response};
use futures_util::StreamExt;

use super::{
    outbox::{Closed, Outbox},
    protocol::Frames,
};
use crate::{
    auth::Viewer,
    db::Cursor,
    error::with_codes,
    fanout::{failed_to_start, serialize, serialize_errors, Fanout, Member},
    hub::{CatchupLane, Hub, RingRecvError},
    sharing::{Lease, StartAlone},
};

/// What every operation of the server runs with: the fan-out and the hub,
/// and the count of running operations (a metric). One per server, shared.
pub struct Operations {
    pub fanout: Arc<Fanout>,
    pub hub: Arc<Hub>,
    /// Operations running over all connections.
    pub running: AtomicUsize,
}

/// One operation started by `subscribe`.
pub(super) struct Subscription {
    pub(super) quoted_id: String,
    pub(super) frames: Arc<Frames>,
    pub(super) outbox: Outbox,
    pub(super) operations: Arc<Operations>,
    /// Who subscribed; resolvers authorize with it. Shared with the
    /// connection: a copy per subscription would cost every signed-in
    /// subscriber its own heap strings.
    pub(super) viewer: Option<Arc<Viewer>>,
    pub(super) address: IpAddr,
}

/// Counts a running subscription for as long as it lives (even aborted).
struct Running(Arc<Operations>);

impl Running {
    fn new(operations: &Arc<Operations>) -> Running {
        operations.running.fetch_add(1, Ordering::Relaxed);
        Running(operations.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

// Rare paths (running alone, handling a client message) are boxed so the
// futures held by every idle connection stay small: memory per connection
// is what decides how many one process holds.
impl Subscription {
    pub(super) async fn run(self, request: Request) {
        let shape = Box::pin(
            self.operations
                .fanout
                .shape_of(&request, self.viewer.as_deref()),
        )
        .await;
        // Counted from here: a shared one joins its group right away, so the
        // count tells which subscriptions will see the next commit.
        let _running = Running::new(&self.operations);
        let result = match shape {
            Some((shape, lease, start_alone)) => {
                // Joined first: the group's items from here on wait in its
                // ring while a member reads its own start.
                let member = self.operations.fanout.join(shape);
                let run = async {
                    match start_alone {
                        None => {
                            drop(request);
                            self.shared(member).await
                        }
                        Some(ready) => {
                            let own = self.own_request(request);
                            Box::pin(self.start_then_share(own, member, ready)).await
                        }
                    }
                };
                match lease {
                    None => run.await,
                    Some(lease) => Box::pin(self.leased(run, lease)).await,
                }
            }
            None => Box::pin(self.alone(self.own_request(request), None, None))
                .await
                .map(|end| end.complete),
        };
        if let Ok(true) = result {
            let _ = self
                .outbox
                .text(self.frames.complete(&self.quoted_id))
                .await;
        }
    }

    /// Its own execution, until it ends — or, for a member catching up
    /// (`member` given), until it has caught up with its group and rejoined
    /// it.
    /// `start`: the member reads a start of its own first, and rejoins
    /// only from the item this says completes it (see `StartAlone`).
    async fn alone(
        &self,
        request: Request,
        mut member: Option<(&mut Member, &mut Cursor)>,
        start: Option<&StartAlone>,
    ) -> Result<AloneEnd, Closed> {
        self.operations.fanout.count_execution();
        let mut stream = self
            .operations
            .fanout
            .schema()
            .execute_stream(request)
            .peekable();
        let (mut first, mut started) = (true, start.is_none());
        while let Some(response) = stream.next().await {
            let response = with_codes(response);
            if first && failed_to_start(&response, &mut stream) {
                self.outbox
                    .text(
                        self.frames
                            .error(&self.quoted_id, &serialize_errors(&response)),
                    )
                    .await?;
                return Ok(AloneEnd {
                    complete: false,
                    rejoined: false,
                });
            }
            first = false;
            self.outbox
                .text(self.frames.next(&self.quoted_id, &serialize(&response)))
                .await?;
            if let Some((member, last)) = member.as_mut() {
                if let Some(cursor) = member.shape().cursor_of(&response) {
                    **last = cursor;
                }
                started = started
                    || start.is_some_and(|ready| {
                        member
                            .shape()
                            .item_of(&response)
                            .is_some_and(|item| ready(item))
                    });
                // Once the group has delivered nothing after this item, its
                // next results are what this stream would send next.
                if started && member.rejoin(**last) {
                    return Ok(AloneEnd {
                        complete: false,
                        rejoined: true,
                    });
                }
            }
        }
        Ok(AloneEnd {
            complete: true,
            rejoined: false,
        })
    }

    /// `request` as this subscriber's own: with its address and viewer.
    fn own_request(&self, request: Request) -> Request {
        let request = request.data(self.address);
        match &self.viewer {
            Some(viewer) => request.data(Viewer::clone(viewer)),
            None => request,
        }
    }

    /// A member whose stream starts with state of its own (a snapshot):
    /// its own execution until an item `ready` says completes the start,
    /// and on (as a catching-up member does) until the member can rejoin
    /// its group; then the group's items after its last cursor.
    async fn start_then_share(
        &self,
        request: Request,
        mut member: Member,
        ready: StartAlone,
    ) -> Result<bool, Closed> {
        let mut last = member.start;
        let end = self
            .alone(request, Some((&mut member, &mut last)), Some(&ready))
            .await?;
        if end.rejoined {
            self.shared_from(member, last).await
        } else {
            Ok(end.complete)
        }
    }

    /// A member granted its class under a lease: `run` until the lease
    /// ends, then an error item (as a stream of its own would end) and
    /// `complete`.
    async fn leased(
        &self,
        run: impl std::future::Future<Output = Result<bool, Closed>>,
        lease: Lease,
    ) -> Result<bool, Closed> {
        let _hold = lease.hold;
        tokio::select! {
            result = run => result,
            error = lease.ended => {
                let response = Response::from_errors(vec![error.into_server_error(Pos::default())]);
                self.outbox
                    .text(self.frames.next(&self.quoted_id, &serialize(&response)))
                    .await?;
                Ok(true)
            }
        }
    }

    /// A member of a shared execution: splice the id into shared bytes.
    async fn shared(&self, member: Member) -> Result<bool, Closed> {
        let start = member.start;
        self.shared_from(member, start).await
    }

    /// The group's items after `last`.
    async fn shared_from(&self, mut member: Member, mut last: Cursor) -> Result<bool, Closed> {
        loop {
            match member.recv().await {
                Ok(item) => {
                    if let Some(errors) = &item.failed_start {
                        self.outbox
                            .text(self.frames.error(&self.quoted_id, errors))
                            .await?;
                        return Ok(false);
                    }
                    match item.cursor {
                        // Delivered while catching up, before rejoining.
                        Some(cursor) if cursor <= last => continue,
                        Some(cursor) => last = cursor,
                        None => {}
                    }
                    self.outbox
                        .text(self.frames.next(&self.quoted_id, &item.payload))
                        .await?;
                }
                Err(RingRecvError::Lagged(_)) => {
                    // Too slow for the group: catch up alone from the log,
                    // then rejoin.
                    self.operations.hub.count_catchup();
                    let request = member.shape().resume(last, self.catchup_lane());
                    let end =
                        Box::pin(self.alone(request, Some((&mut member, &mut last)), None)).await?;
                    if !end.rejoined {
                        return Ok(end.complete);
                    }
                }
                Err(RingRecvError::Closed) => return Ok(true),
            }
        }
    }
}

impl Subscription {
    /// Whose turns this subscription's log reads take: its user, else its
    /// address (as `domains::catchup_client` says for a request of its own).
    fn catchup_lane(&self) -> CatchupLane {
        let user = self.viewer.as_ref().map(|viewer| viewer.user_id.as_str());
        CatchupLane::of(user, Some(self.address))
    }
}

/// How a run alone ended.
struct AloneEnd {
    /// The stream ended normally: a `complete` is due.
    complete: bool,
    /// A catching-up member is back in its group.
    rejoined: bool,
}
