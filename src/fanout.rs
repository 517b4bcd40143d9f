//! `Fanout`: identical live subscriptions executed once.
//!
//! async-graphql executes a subscription's selection set once per
//! subscriber. Here subscribers with the same operation and variables (the
//! subscription's *shape*) share one execution: its results are serialized
//! once and the same bytes go to every member, which only splices its id
//! into the frame (invariant 7; Hasura calls this multiplexing).
//!
//! Only live streams whose items do not depend on when a member joined are
//! shared: today `changes` without `after`. A member that falls behind the
//! group's buffer leaves it and continues alone from its last cursor, read
//! back from the log ([`ResumeFrom`]).

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
};

use async_graphql::{
    parser::{
        parse_query,
        types::{OperationType, Selection},
    },
    Request, Value as GqlValue,
};
use futures_util::{stream::Peekable, FutureExt, Stream, StreamExt};
use tokio::{
    sync::broadcast::{self, error::RecvError},
    task::AbortHandle,
};

use crate::{
    auth::Viewer, db::Cursor, error::with_codes, graphql::TidewireSchema, hub::Hub,
    request_guard::QueryLimits,
};

/// Root subscription fields whose streams can be shared.
const SHAREABLE_FIELDS: &[&str] = &["changes"];

/// Request data: resume a stream after this cursor instead of its `after`
/// argument (a member leaving its group).
#[derive(Debug, Clone, Copy)]
pub struct ResumeFrom(pub Cursor);

/// Request data: the resolver records the cursor of the item it yields, so
/// a group knows where each shared result stands in the log.
#[derive(Debug, Clone, Default)]
pub struct CursorProbe(Arc<Mutex<Option<Cursor>>>);

impl CursorProbe {
    pub fn set(&self, cursor: Cursor) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(cursor);
    }

    fn take(&self) -> Option<Cursor> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// What identifies a shared execution.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shape {
    pub query: String,
    pub operation: Option<String>,
    /// Variables as canonical JSON text.
    pub variables: String,
    /// Results are shared only between subscribers who are the same viewer.
    pub viewer: Option<Viewer>,
}

impl Shape {
    /// The shape of `request`, made by `viewer`, if its stream can be
    /// shared.
    /// Queries over `limits` are not shared: executed alone, the schema's
    /// [`RequestGuard`](crate::request_guard::RequestGuard) refuses them
    /// with a proper error, and the parser never sees them.
    pub fn of(request: &Request, viewer: Option<&Viewer>, limits: &QueryLimits) -> Option<Shape> {
        limits.check(&request.query).ok()?;
        let document = parse_query(&request.query).ok()?;
        let operation = match &request.operation_name {
            Some(name) => {
                document
                    .operations
                    .iter()
                    .find(|(n, _)| n.is_some_and(|n| n.as_str() == name))?
                    .1
            }
            None => {
                let mut ops = document.operations.iter();
                let (_, op) = ops.next()?;
                if ops.next().is_some() {
                    return None;
                }
                op
            }
        };
        if operation.node.ty != OperationType::Subscription || !document.fragments.is_empty() {
            return None;
        }
        let variables = &request.variables;
        let shareable =
            operation
                .node
                .selection_set
                .node
                .items
                .iter()
                .all(|item| match &item.node {
                    Selection::Field(field) => {
                        let field = &field.node;
                        SHAREABLE_FIELDS.contains(&field.name.node.as_str())
                            && field.directives.is_empty()
                            && field.get_argument("after").is_none_or(|after| {
                                // Resolve `$variables`; a missing one is null.
                                let value = after.node.clone().into_const_with(|name| {
                                    Ok::<_, ()>(
                                        variables.get(&name).cloned().unwrap_or(GqlValue::Null),
                                    )
                                });
                                value == Ok(GqlValue::Null)
                            })
                    }
                    _ => false,
                });
        shareable.then(|| Shape {
            query: request.query.clone(),
            operation: request.operation_name.clone(),
            variables: serde_json::to_string(variables).unwrap_or_default(),
            viewer: viewer.cloned(),
        })
    }

    /// A request that executes this shape (as its viewer).
    pub fn request(&self) -> Request {
        let mut request = Request::new(self.query.clone())
            .variables(serde_json::from_str(&self.variables).unwrap_or_default());
        request.operation_name = self.operation.clone();
        match &self.viewer {
            Some(viewer) => request.data(viewer.clone()),
            None => request,
        }
    }
}

/// Whether `response`, the first of its stream, means the operation failed
/// to start (validation, a resolver refusing): it holds only errors and the
/// stream ends right after it. An error-only response followed by more is a
/// failed item of a stream that goes on.
pub(crate) fn failed_to_start<S: Stream + Unpin>(
    response: &async_graphql::Response,
    stream: &mut Peekable<S>,
) -> bool {
    response.data == GqlValue::Null
        && !response.errors.is_empty()
        && matches!(Pin::new(stream).peek().now_or_never(), Some(None))
}

/// One serialized result of a shared execution.
#[derive(Debug)]
pub struct SharedItem {
    /// Log position of the change behind this result, if any.
    pub cursor: Option<Cursor>,
    /// `{"data":…}` or `{"data":…,"errors":[…]}`, serialized once.
    pub payload: Arc<str>,
    /// Errors alone, as the first result: the operation failed to start.
    pub failed_start: Option<Arc<str>>,
}

struct Group {
    sender: broadcast::Sender<Arc<SharedItem>>,
    task: AbortHandle,
    generation: u64,
}

/// The registry of shared executions.
pub struct Fanout {
    schema: TidewireSchema,
    hub: Arc<Hub>,
    groups: Mutex<HashMap<Arc<Shape>, Group>>,
    /// Results buffered per group before a slow member falls out.
    capacity: usize,
    generations: AtomicU64,
    /// Executions started (a metric: with sharing, far fewer than
    /// subscriptions).
    executions: AtomicU64,
    /// Checked before a subscription's query is parsed to find its shape.
    query_limits: QueryLimits,
}

impl Fanout {
    pub fn new(
        schema: TidewireSchema,
        hub: Arc<Hub>,
        capacity: usize,
        query_limits: QueryLimits,
    ) -> Arc<Fanout> {
        Arc::new(Fanout {
            query_limits,
            schema,
            hub,
            groups: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            generations: AtomicU64::new(0),
            executions: AtomicU64::new(0),
        })
    }

    /// The shape of `request` if it can be shared (see [`Shape::of`]).
    pub fn shape_of(&self, request: &Request, viewer: Option<&Viewer>) -> Option<Shape> {
        Shape::of(request, viewer, &self.query_limits)
    }

    pub fn schema(&self) -> &TidewireSchema {
        &self.schema
    }

    pub fn group_count(&self) -> usize {
        self.lock().len()
    }

    pub fn executions(&self) -> u64 {
        self.executions.load(Ordering::Relaxed)
    }

    pub(crate) fn count_execution(&self) {
        self.executions.fetch_add(1, Ordering::Relaxed);
    }

    /// Joins the group of `shape`, starting its execution if it has none.
    pub fn join(self: &Arc<Self>, shape: Shape) -> Member {
        let start = self.hub.published();
        let mut groups = self.lock();
        let (shape, receiver) = match groups.get_key_value(&shape) {
            // Members share the group's copy of the shape.
            Some((key, group)) => (key.clone(), group.sender.subscribe()),
            None => {
                let shape = Arc::new(shape);
                let (sender, receiver) = broadcast::channel(self.capacity);
                let generation = self.generations.fetch_add(1, Ordering::Relaxed);
                let task = tokio::spawn(self.clone().execute(
                    shape.clone(),
                    sender.clone(),
                    generation,
                ));
                groups.insert(
                    shape.clone(),
                    Group {
                        sender,
                        task: task.abort_handle(),
                        generation,
                    },
                );
                (shape, receiver)
            }
        };
        Member {
            fanout: self.clone(),
            shape,
            receiver: Some(receiver),
            start,
        }
    }

    /// Runs one shared execution until its stream ends or nobody listens.
    async fn execute(
        self: Arc<Self>,
        shape: Arc<Shape>,
        sender: broadcast::Sender<Arc<SharedItem>>,
        generation: u64,
    ) {
        self.count_execution();
        let probe = CursorProbe::default();
        let request = shape.request().data(probe.clone());
        let mut stream = self.schema.execute_stream(request).peekable();
        let mut first = true;
        while let Some(response) = stream.next().await {
            let response = with_codes(response);
            let failed_start = (first && failed_to_start(&response, &mut stream))
                .then(|| Arc::from(serde_json::to_string(&response.errors).unwrap_or_default()));
            first = false;
            let item = SharedItem {
                cursor: probe.take(),
                payload: Arc::from(serde_json::to_string(&response).unwrap_or_default()),
                failed_start,
            };
            if sender.send(Arc::new(item)).is_err() {
                break;
            }
        }
        let mut groups = self.lock();
        if groups
            .get(&shape)
            .is_some_and(|g| g.generation == generation)
        {
            groups.remove(&shape);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<Shape>, Group>> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One subscriber of a shared execution; leaves the group on drop.
pub struct Member {
    fanout: Arc<Fanout>,
    shape: Arc<Shape>,
    receiver: Option<broadcast::Receiver<Arc<SharedItem>>>,
    /// Hub position when the member joined: where to resume from if it
    /// falls behind before receiving anything.
    pub start: Cursor,
}

impl Member {
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    pub async fn recv(&mut self) -> Result<Arc<SharedItem>, RecvError> {
        match self.receiver.as_mut() {
            Some(receiver) => receiver.recv().await,
            None => Err(RecvError::Closed),
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        drop(self.receiver.take());
        let mut groups = self.fanout.lock();
        if let Some(group) = groups.get(&self.shape) {
            if group.sender.receiver_count() == 0 {
                group.task.abort();
                groups.remove(&self.shape);
            }
        }
    }
}
