//! How a subscription field declares that its results may be shared.
//!
//! Subscribers who send the same operation with the same variables and who
//! may see the same rows get the same results; they can share one execution
//! (see `fanout`). *Who may see the same rows* is a [`Visibility`] class —
//! anyone, a role, or one owner — never a session or a token, so ten
//! thousand signed-in users watching a public table share one execution.
//!
//! A domain opts a field in by giving a [`ShareRule`]: from the field's
//! arguments and the viewer, the class the results depend on, or `None`
//! when they depend on more (a resume cursor, a snapshot taken at start) and
//! the subscription must run alone. `graphql::sharing_rules` collects them.
//!
//! A class can be narrower than the viewer's rights: the members of a chat
//! room share the room's stream. Such a rule checks the member's right as
//! it grants the class, and hands back a [`Lease`]: what the member holds
//! while it streams (its presence in the room) and a future that resolves,
//! with the error that ends the member's stream, once the right is gone.

use std::{any::Any, collections::HashMap, fmt, sync::Arc};

use async_graphql::{Name, Value};
use futures_util::future::BoxFuture;

use crate::auth::{Role, Viewer};

/// Whose view of the data a shared execution computes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Visibility {
    /// The same for everyone, signed in or not.
    Anyone,
    /// Everyone with this role sees the same (admins: everything).
    Role(Role),
    /// Only this user's rows.
    Owner(String),
    /// The members of this room, each of whom the rule checked. A shared
    /// execution of this class runs with the `Visibility` itself in its
    /// request data, and the field trusts it for that room alone.
    Room(i64),
}

impl Visibility {
    /// The viewer a shared execution runs as: it carries the class, not a
    /// session (sessions end their own streams, on their own connection).
    pub fn viewer(&self) -> Option<Viewer> {
        let viewer = |user_id: String, role| Viewer {
            user_id,
            role,
            session_id: None,
            expires_at: i64::MAX,
        };
        match self {
            Visibility::Anyone | Visibility::Room(_) => None,
            Visibility::Role(role) => Some(viewer(format!("role:{role:?}"), *role)),
            Visibility::Owner(user) => Some(viewer(user.clone(), Role::User)),
        }
    }
}

/// What a rule sees: the root field's arguments (variables resolved) and
/// who subscribes.
#[derive(Debug, Clone)]
pub struct ShareQuery {
    pub arguments: HashMap<Name, Value>,
    pub viewer: Option<Viewer>,
}

impl ShareQuery {
    /// An argument's value; absent and `null` are both `None`.
    pub fn argument(&self, name: &str) -> Option<&Value> {
        self.arguments
            .get(name)
            .filter(|value| !matches!(value, Value::Null))
    }
}

/// What a rule grants one subscriber.
pub struct Share {
    pub visibility: Visibility,
    pub lease: Option<Lease>,
    /// For a stream that starts with state of its own (a snapshot): each
    /// member reads its start alone, and takes the group's items once this
    /// says an item of its own completes the start (see [`StartAlone`]).
    pub start_alone: Option<StartAlone>,
}

impl From<Visibility> for Share {
    fn from(visibility: Visibility) -> Share {
        Share {
            visibility,
            lease: None,
            start_alone: None,
        }
    }
}

/// Whether an item (the root field's value) completes a member's own
/// start. The group of such a field executes from the live position, with
/// no start; a member joins the group first, reads its start alone up to
/// that item, then receives the group's items after the item's cursor.
pub type StartAlone = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

/// A member's hold on a shared stream it was granted under conditions.
pub struct Lease {
    /// Held for as long as the member streams, dropped when it stops.
    pub hold: Box<dyn Any + Send + Sync>,
    /// Resolves when the member's right ends: the member's stream then
    /// ends with this error.
    pub ended: BoxFuture<'static, async_graphql::Error>,
}

/// A field's sharing rule: the visibility class its results depend on, or
/// `None` to run alone.
pub type ShareRule = Arc<dyn Fn(ShareQuery) -> BoxFuture<'static, Option<Share>> + Send + Sync>;

/// The rules of every shareable root subscription field, by field name.
#[derive(Clone, Default)]
pub struct SharingRules(HashMap<&'static str, ShareRule>);

impl SharingRules {
    pub fn with(mut self, field: &'static str, rule: ShareRule) -> Self {
        self.0.insert(field, rule);
        self
    }

    pub fn get(&self, field: &str) -> Option<&ShareRule> {
        self.0.get(field)
    }
}

impl fmt::Debug for SharingRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}
