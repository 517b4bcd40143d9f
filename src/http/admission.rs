//! `Admission`: who may open a WebSocket — the origin allow-list against
//! cross-site WebSocket hijacking, and caps on connections per address and
//! per user.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
};

use axum::{
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};

#[derive(Debug)]
pub struct Admission {
    /// Origins allowed besides the server's own.
    origins: Vec<String>,
    addresses: Slots<IpAddr>,
    users: Slots<String>,
}

/// Counts open connections per key, up to a limit.
#[derive(Debug)]
struct Slots<K> {
    limit: usize,
    open: Mutex<HashMap<K, usize>>,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    fn new(limit: usize) -> Self {
        Slots {
            limit,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn take(&self, key: &K) -> bool {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= self.limit {
            return false;
        }
        *count += 1;
        true
    }

    fn keys(&self) -> Vec<K> {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    fn give_back(&self, key: &K) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                open.remove(key);
            }
        }
    }
}

/// Why an upgrade was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Origin,
    TooMany,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Origin => (
                StatusCode::FORBIDDEN,
                "WebSocket origin not allowed (see --allowed-origins)\n",
            )
                .into_response(),
            Refusal::TooMany => (
                StatusCode::TOO_MANY_REQUESTS,
                "too many WebSocket connections from this address\n",
            )
                .into_response(),
        }
    }
}

/// One admitted connection; gives its place back on drop.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    address: IpAddr,
}

impl Ticket {
    /// The client's address.
    pub fn address(&self) -> IpAddr {
        self.address
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.addresses.give_back(&self.address);
    }
}

/// One connection counted against its user; gives its place back on drop.
#[derive(Debug)]
pub struct UserTicket {
    admission: Arc<Admission>,
    user: String,
}

impl Drop for UserTicket {
    fn drop(&mut self) {
        self.admission.users.give_back(&self.user);
    }
}

impl Admission {
    pub fn new(per_address: usize, per_user: usize, origins: Vec<String>) -> Self {
        Admission {
            origins: origins
                .into_iter()
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .collect(),
            addresses: Slots::new(per_address),
            users: Slots::new(per_user),
        }
    }

    /// Users with at least one connection open on this node.
    pub fn connected_users(&self) -> Vec<String> {
        self.users.keys()
    }

    /// Counts a connection against `user` (once it has authenticated).
    pub fn admit_user(self: &Arc<Self>, user: &str) -> Option<UserTicket> {
        self.users.take(&user.to_owned()).then(|| UserTicket {
            admission: self.clone(),
            user: user.to_owned(),
        })
    }

    pub fn admit(
        self: &Arc<Self>,
        headers: &HeaderMap,
        address: IpAddr,
    ) -> Result<Ticket, Refusal> {
        if !self.origin_allowed(headers) {
            return Err(Refusal::Origin);
        }
        if !self.addresses.take(&address) {
            return Err(Refusal::TooMany);
        }
        Ok(Ticket {
            admission: self.clone(),
            address,
        })
    }

    /// No `Origin` (not a browser), the server's own origin, or a listed one.
    fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let origin = origin.trim_end_matches('/');
        if self.origins.iter().any(|allowed| allowed == origin) {
            return true;
        }
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        matches!((origin_host, host), (Some(a), Some(b)) if a.eq_ignore_ascii_case(b))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(origin: Option<&'static str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::HOST,
            HeaderValue::from_static("tidewire.local:4000"),
        );
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_static(origin));
        }
        headers
    }

    #[test]
    fn origins() {
        let admission = Arc::new(Admission::new(
            10,
            10,
            vec!["https://app.example.com/".into()],
        ));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(
            admission.admit(&headers(None), ip).is_ok(),
            "no Origin: not a browser"
        );
        assert!(admission
            .admit(&headers(Some("http://tidewire.local:4000")), ip)
            .is_ok());
        assert!(admission
            .admit(&headers(Some("https://app.example.com")), ip)
            .is_ok());
        assert_eq!(
            admission
                .admit(&headers(Some("https://evil.example")), ip)
                .unwrap_err(),
            Refusal::Origin
        );
        assert_eq!(
            admission.admit(&headers(Some("null")), ip).unwrap_err(),
            Refusal::Origin
        );
    }

    #[test]
    fn connections_per_address_are_counted_and_given_back() {
        let admission = Arc::new(Admission::new(2, 1, Vec::new()));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = admission.admit(&headers(None), a).unwrap();
        let _second = admission.admit(&headers(None), a).unwrap();
        assert_eq!(
            admission.admit(&headers(None), a).unwrap_err(),
            Refusal::TooMany
        );
        assert!(
            admission.admit(&headers(None), b).is_ok(),
            "other addresses unaffected"
        );
        drop(first);
        assert!(admission.admit(&headers(None), a).is_ok());

        let ann = admission.admit_user("ann").unwrap();
        assert!(admission.admit_user("ann").is_none());
        assert!(admission.admit_user("ben").is_some());
        drop(ann);
        assert!(admission.admit_user("ann").is_some());
    }
}
