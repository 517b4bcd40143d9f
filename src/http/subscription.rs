//! `Subscription`: one operation a client started with `subscribe`, run as
//! its own task: alone, or as a member of a shared execution.

use std::{
    net::IpAddr,
    sync::{atomic::Ordering, Arc},
};

use async_graphql::Request;
use futures_util::StreamExt;
use tokio::sync::broadcast::error::RecvError;

use super::{
    outbox::{Closed, Outbox},
    protocol::Frames,
    AppState,
};
use crate::{
    auth::Viewer,
    error::with_codes,
    fanout::{failed_to_start, Member, ResumeFrom},
};

/// One operation started by `subscribe`.
pub(super) struct Subscription {
    pub(super) quoted_id: String,
    pub(super) frames: Arc<Frames>,
    pub(super) outbox: Outbox,
    pub(super) state: Arc<AppState>,
    /// Who subscribed; resolvers authorize with it.
    pub(super) viewer: Option<Viewer>,
    pub(super) address: IpAddr,
}

/// Counts a running subscription for as long as it lives (even aborted).
struct Running(Arc<AppState>);

impl Running {
    fn new(state: &Arc<AppState>) -> Running {
        state.subscriptions.fetch_add(1, Ordering::Relaxed);
        Running(state.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.subscriptions.fetch_sub(1, Ordering::Relaxed);
    }
}

// Rare paths (running alone, handling a client message) are boxed so the
// futures held by every idle connection stay small: memory per connection
// is what decides how many one process holds.
impl Subscription {
    pub(super) async fn run(self, request: Request) {
        let _running = Running::new(&self.state);
        let result = match self.state.fanout.shape_of(&request, self.viewer.as_ref()) {
            Some(shape) => {
                drop(request);
                let member = self.state.fanout.join(shape);
                self.shared(member).await
            }
            None => {
                let request = request.data(self.address);
                let request = match &self.viewer {
                    Some(viewer) => request.data(viewer.clone()),
                    None => request,
                };
                Box::pin(self.alone(request)).await
            }
        };
        if let Ok(true) = result {
            let _ = self
                .outbox
                .text(self.frames.complete(&self.quoted_id))
                .await;
        }
    }

    /// Its own execution. `Ok(true)` when a `complete` is due.
    async fn alone(&self, request: Request) -> Result<bool, Closed> {
        self.state.fanout.count_execution();
        let mut stream = self
            .state
            .fanout
            .schema()
            .execute_stream(request)
            .peekable();
        let mut first = true;
        while let Some(response) = stream.next().await {
            let response = with_codes(response);
            if first && failed_to_start(&response, &mut stream) {
                let errors = serde_json::to_string(&response.errors).unwrap_or_default();
                self.outbox
                    .text(self.frames.error(&self.quoted_id, &errors))
                    .await?;
                return Ok(false);
            }
            first = false;
            let payload = serde_json::to_string(&response).unwrap_or_default();
            self.outbox
                .text(self.frames.next(&self.quoted_id, &payload))
                .await?;
        }
        Ok(true)
    }

    /// A member of a shared execution: splice the id into shared bytes.
    async fn shared(&self, mut member: Member) -> Result<bool, Closed> {
        let mut last = member.start;
        loop {
            match member.recv().await {
                Ok(item) => {
                    if let Some(errors) = &item.failed_start {
                        self.outbox
                            .text(self.frames.error(&self.quoted_id, errors))
                            .await?;
                        return Ok(false);
                    }
                    if let Some(cursor) = item.cursor {
                        last = cursor;
                    }
                    self.outbox
                        .text(self.frames.next(&self.quoted_id, &item.payload))
                        .await?;
                }
                Err(RecvError::Lagged(_)) => {
                    // Too slow for the group: go on alone from the log.
                    let request = member.shape().request().data(ResumeFrom(last));
                    drop(member);
                    self.state.hub.count_catchup();
                    return Box::pin(self.alone(request)).await;
                }
                Err(RecvError::Closed) => return Ok(true),
            }
        }
    }
}
