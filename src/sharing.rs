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

use std::{collections::HashMap, fmt, sync::Arc};

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
            Visibility::Anyone => None,
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

/// A field's sharing rule: the visibility class its results depend on, or
/// `None` to run alone.
pub type ShareRule =
    Arc<dyn Fn(ShareQuery) -> BoxFuture<'static, Option<Visibility>> + Send + Sync>;

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
