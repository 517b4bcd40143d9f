//! `Fanout`: live subscriptions of one shape executed once.
//!
//! async-graphql executes a subscription's selection set once per
//! subscriber. Here subscribers whose requests have the same *shape* —
//! the same operation, the same variables and the same [`Visibility`]
//! class — share one execution: each result is serialized once, and the
//! same bytes go to every member, which only splices its id into the frame
//! (invariant 7; Hasura calls this multiplexing). The class, not the
//! session, is in the key, so signed-in users share with each other.
//!
//! A field opts in with a [`ShareRule`](crate::sharing::ShareRule)
//! (collected by `graphql::sharing_rules`); the shared selection must
//! include the item's `cursor`, which then travels in the result itself:
//! each [`SharedItem`] is a `(cursor, bytes)` pair.
//!
//! A group buffers results in a [`Ring`] bounded in items and bytes. A
//! member that falls behind it leaves for the log: it runs the same shape
//! alone from its last cursor ([`ResumeAfter`]) and rejoins the group once
//! it has caught up with what the group delivered.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, PoisonError,
    },
};

use async_graphql::{
    parser::{
        parse_query,
        types::{OperationType, Selection},
    },
    Name, Request, Response, Value as GqlValue,
};
use futures_util::{stream::Peekable, FutureExt, Stream, StreamExt};
use tokio::task::AbortHandle;

use crate::{
    auth::Viewer,
    db::Cursor,
    error::{internal, with_codes},
    graphql::TidewireSchema,
    hub::{CatchupLane, Hub, ResumeAfter, Ring, RingReceiver, RingRecvError},
    request_guard::QueryLimits,
    sharing::{Lease, ShareQuery, SharingRules, StartAlone, Visibility},
};

/// What identifies a shared execution.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shape {
    query: String,
    operation: Option<String>,
    /// Variables as canonical JSON text.
    variables: String,
    /// Whose view of the data the results are.
    visibility: Visibility,
    /// The root field's key in `data` (its alias or name).
    response_key: String,
    /// Members read their start alone; the group executes from the live
    /// position (see `sharing::StartAlone`).
    starts_alone: bool,
}

impl Shape {
    /// A request that executes this shape, as its visibility class.
    pub fn request(&self) -> Request {
        let variables = serde_json::from_str(&self.variables).unwrap_or_default();
        let mut request = Request::new(self.query.clone()).variables(variables);
        request.operation_name = self.operation.clone();
        // The class itself, for fields that share by a class other than
        // the viewer's (a room: see `Visibility::Room`).
        let request = request.data(self.visibility.clone());
        match self.visibility.viewer() {
            Some(viewer) => request.data(viewer),
            None => request,
        }
    }

    /// A request that continues this shape alone after `cursor`, its log
    /// reads taking the turns of `client` (the member's user or address,
    /// not the class it shares).
    pub fn resume(&self, after: Cursor, client: CatchupLane) -> Request {
        self.request().data(ResumeAfter(after)).data(client)
    }

    /// The root field's value in a result.
    pub fn item_of<'a>(&self, response: &'a Response) -> Option<&'a GqlValue> {
        let GqlValue::Object(data) = &response.data else {
            return None;
        };
        data.get(self.response_key.as_str())
    }

    /// The cursor of a result: the root field's `cursor`, which a shared
    /// selection always includes.
    pub fn cursor_of(&self, response: &Response) -> Option<Cursor> {
        let GqlValue::Object(item) = self.item_of(response)? else {
            return None;
        };
        match item.get("cursor")? {
            GqlValue::String(text) => text.parse().ok(),
            _ => None,
        }
    }
}

/// Whether `response`, the first of its stream, means the operation failed
/// to start (validation, a resolver refusing): it holds only errors and the
/// stream ends right after it. An error-only response followed by more is a
/// failed item of a stream that goes on.
pub(crate) fn failed_to_start<S: Stream + Unpin>(
    response: &Response,
    stream: &mut Peekable<S>,
) -> bool {
    response.data == GqlValue::Null
        && !response.errors.is_empty()
        && matches!(Pin::new(stream).peek().now_or_never(), Some(None))
}

/// `response` as JSON; a result that cannot be serialized becomes an
/// `INTERNAL` error payload (logged), never an empty frame.
pub fn serialize(response: &Response) -> String {
    serde_json::to_string(response).unwrap_or_else(|error| {
        let error = internal(format!("serializing a result: {error}"));
        let errors = serde_json::json!([{
            "message": error.message,
            "extensions": {"code": "INTERNAL"},
        }]);
        format!(r#"{{"data":null,"errors":{errors}}}"#)
    })
}

/// The errors of `response` as a JSON array, for an `error` frame.
pub fn serialize_errors(response: &Response) -> String {
    serde_json::to_string(&response.errors).unwrap_or_else(|error| {
        let error = internal(format!("serializing errors: {error}"));
        serde_json::json!([{"message": error.message, "extensions": {"code": "INTERNAL"}}])
            .to_string()
    })
}

/// One serialized result of a shared execution.
#[derive(Debug)]
pub struct SharedItem {
    /// Log position of the change behind this result.
    pub cursor: Option<Cursor>,
    /// `{"data":…}` or `{"data":…,"errors":[…]}`, serialized once.
    pub payload: Arc<str>,
    /// Errors alone, as the first result: the operation failed to start.
    pub failed_start: Option<Arc<str>>,
}

struct Group {
    ring: Arc<Ring<SharedItem>>,
    /// Cursor of the newest result handed to the ring (set before it is).
    last: Mutex<Option<Cursor>>,
    /// Members, in the ring or catching up alone.
    members: AtomicUsize,
    task: Mutex<Option<AbortHandle>>,
}

impl Group {
    fn last(&self) -> Option<Cursor> {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Bounds of each group's buffer.
#[derive(Debug, Clone, Copy)]
pub struct GroupBuffer {
    pub items: usize,
    pub bytes: usize,
}

/// The registry of shared executions.
pub struct Fanout {
    schema: TidewireSchema,
    hub: Arc<Hub>,
    groups: Mutex<HashMap<Arc<Shape>, Arc<Group>>>,
    buffer: GroupBuffer,
    /// Checked before a subscription's query is parsed to find its shape.
    query_limits: QueryLimits,
    rules: SharingRules,
    /// Executions started (a metric: with sharing, far fewer than
    /// subscriptions).
    executions: AtomicU64,
}

impl Fanout {
    pub fn new(
        schema: TidewireSchema,
        hub: Arc<Hub>,
        buffer: GroupBuffer,
        query_limits: QueryLimits,
        rules: SharingRules,
    ) -> Arc<Fanout> {
        Arc::new(Fanout {
            schema,
            hub,
            groups: Mutex::new(HashMap::new()),
            buffer,
            query_limits,
            rules,
            executions: AtomicU64::new(0),
        })
    }

    pub fn schema(&self) -> &TidewireSchema {
        &self.schema
    }

    pub fn group_count(&self) -> usize {
        self.lock().len()
    }

    /// Bytes buffered over all groups (a metric).
    pub fn buffered_bytes(&self) -> usize {
        self.lock().values().map(|g| g.ring.buffered_bytes()).sum()
    }

    pub fn executions(&self) -> u64 {
        self.executions.load(Ordering::Relaxed)
    }

    pub(crate) fn count_execution(&self) {
        self.executions.fetch_add(1, Ordering::Relaxed);
    }

    /// The shape of `request`, made by `viewer`, if its stream can be
    /// shared: one subscription field with a sharing rule that names a
    /// class, selecting the item's `cursor`; with the lease the rule granted
    /// it on, if any. Queries over the limits are not shared: executed
    /// alone, the schema's `RequestGuard` refuses them with a proper error,
    /// and the parser never sees them here.
    pub async fn shape_of(
        &self,
        request: &Request,
        viewer: Option<&Viewer>,
    ) -> Option<(Shape, Option<Lease>, Option<StartAlone>)> {
        self.query_limits.check(&request.query).ok()?;
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
        let [item] = operation.node.selection_set.node.items.as_slice() else {
            return None;
        };
        let Selection::Field(field) = &item.node else {
            return None;
        };
        let field = &field.node;
        let selects_cursor = field.selection_set.node.items.iter().any(|item| {
            matches!(&item.node, Selection::Field(f)
                if f.node.name.node == "cursor" && f.node.alias.is_none()
                    && f.node.directives.is_empty())
        });
        if !field.directives.is_empty() || !selects_cursor {
            return None;
        }
        let rule = self.rules.get(field.name.node.as_str())?;
        let variables = &request.variables;
        let mut arguments = HashMap::new();
        for (name, value) in &field.arguments {
            // Resolve `$variables`; a missing one is null.
            let value = value
                .node
                .clone()
                // Resolve `$variables` as execution will: the value sent,
                // else the variable's default, else null.
                .into_const_with(|name| {
                    let value = variables.get(&name).cloned().or_else(|| {
                        operation
                            .node
                            .variable_definitions
                            .iter()
                            .find(|definition| definition.node.name.node == name)
                            .and_then(|definition| definition.node.default_value.as_ref())
                            .map(|default| default.node.clone())
                    });
                    Ok::<_, ()>(value.unwrap_or(GqlValue::Null))
                })
                .ok()?;
            arguments.insert(Name::new(name.node.as_str()), value);
        }
        let variables = serde_json::to_string(variables).ok()?;
        let share = rule(ShareQuery {
            arguments,
            viewer: viewer.cloned(),
        })
        .await?;
        let shape = Shape {
            query: request.query.clone(),
            operation: request.operation_name.clone(),
            variables,
            visibility: share.visibility,
            response_key: field.response_key().node.to_string(),
            starts_alone: share.start_alone.is_some(),
        };
        Some((shape, share.lease, share.start_alone))
    }

    /// Joins the group of `shape`, starting its execution if it has none.
    pub fn join(self: &Arc<Self>, shape: Shape) -> Member {
        let start = self.hub.published();
        let mut groups = self.lock();
        // A group whose execution just ended (its ring closed, its entry
        // not yet removed) is not joined: a new one starts, so a late
        // joiner sees the same start (or start-up error) as everyone.
        let open = groups
            .get_key_value(&shape)
            .filter(|(_, group)| !group.ring.is_closed());
        let (shape, group) = match open {
            // Members share the group's copy of the shape.
            Some((key, group)) => (key.clone(), group.clone()),
            None => {
                let shape = Arc::new(shape);
                // A group whose members start alone runs from here on.
                let live_from = shape.starts_alone.then_some(start);
                let group = Arc::new(Group {
                    ring: Ring::new(self.buffer.items, self.buffer.bytes),
                    // It has (as good as) delivered everything up to where
                    // it starts: a member whose own start ends before that
                    // must not rejoin until it has read up to there.
                    last: Mutex::new(live_from),
                    members: AtomicUsize::new(0),
                    task: Mutex::new(None),
                });
                let task = tokio::spawn(self.clone().execute(
                    shape.clone(),
                    group.clone(),
                    live_from,
                ));
                *group.task.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(task.abort_handle());
                groups.insert(shape.clone(), group.clone());
                (shape, group)
            }
        };
        group.members.fetch_add(1, Ordering::Relaxed);
        let receiver = Some(group.ring.subscribe());
        drop(groups);
        Member {
            fanout: self.clone(),
            shape,
            group,
            receiver,
            start,
        }
    }

    /// Runs one shared execution until its stream ends or its members left;
    /// from `live_from` when its members start alone.
    async fn execute(
        self: Arc<Self>,
        shape: Arc<Shape>,
        group: Arc<Group>,
        live_from: Option<Cursor>,
    ) {
        self.count_execution();
        let request = match live_from {
            Some(cursor) => shape.request().data(ResumeAfter(cursor)),
            None => shape.request(),
        };
        let mut stream = self.schema.execute_stream(request).peekable();
        let mut first = true;
        while let Some(response) = stream.next().await {
            let response = with_codes(response);
            let failed_start = (first && failed_to_start(&response, &mut stream))
                .then(|| Arc::from(serialize_errors(&response)));
            first = false;
            let cursor = shape.cursor_of(&response);
            let payload: Arc<str> = Arc::from(serialize(&response));
            if cursor.is_some() {
                *group.last.lock().unwrap_or_else(PoisonError::into_inner) = cursor;
            }
            let bytes = payload.len();
            let item = SharedItem {
                cursor,
                payload,
                failed_start,
            };
            group.ring.send(Arc::new(item), bytes);
        }
        group.ring.close();
        let mut groups = self.lock();
        if groups.get(&shape).is_some_and(|g| Arc::ptr_eq(g, &group)) {
            groups.remove(&shape);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<Shape>, Arc<Group>>> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One subscriber of a shared execution; leaves the group on drop.
pub struct Member {
    fanout: Arc<Fanout>,
    shape: Arc<Shape>,
    group: Arc<Group>,
    /// `None` while catching up alone from the log.
    receiver: Option<RingReceiver<SharedItem>>,
    /// Hub position when the member joined: where to resume from if it
    /// falls behind before receiving anything.
    pub start: Cursor,
}

impl Member {
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The group's next result; `Lagged` when it moved on without this
    /// member (the member then leaves the ring: see [`Member::rejoin`]).
    pub async fn recv(&mut self) -> Result<Arc<SharedItem>, RingRecvError> {
        let Some(receiver) = self.receiver.as_mut() else {
            return Err(RingRecvError::Closed);
        };
        let item = receiver.recv().await;
        if let Err(RingRecvError::Lagged(_)) = item {
            // Reading alone from the log now: hold no place in the ring.
            self.receiver = None;
        }
        item
    }

    /// Back into the ring, if the group has delivered nothing after `last`
    /// (the member's own last cursor, read alone from the log). Results the
    /// ring then hands out at or before `last` are the caller's to skip.
    pub fn rejoin(&mut self, last: Cursor) -> bool {
        let receiver = self.group.ring.subscribe();
        if self.group.last().is_none_or(|delivered| delivered <= last) {
            self.receiver = Some(receiver);
            true
        } else {
            false
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        drop(self.receiver.take());
        let mut groups = self.fanout.lock();
        if self.group.members.fetch_sub(1, Ordering::Relaxed) == 1 {
            if let Some(task) = self
                .group
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                task.abort();
            }
            if groups
                .get(&self.shape)
                .is_some_and(|g| Arc::ptr_eq(g, &self.group))
            {
                groups.remove(&self.shape);
            }
        }
    }
}
