//! `Admission`: who may open a WebSocket — the origin allow-list against
//! cross-site WebSocket hijacking — and the cap on connections per user.
//! (Connections per address are capped for every connection in
//! [`super::connections`].)

use std::sync::Arc;

use axum::{
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};

use super::connections::Slots;

#[derive(Debug)]
pub struct Admission {
    /// Normalized origins (`scheme://host:port`) whose pages may open
    /// WebSockets: the server's own and the configured ones.
    origins: Vec<String>,
    /// Connections per user; the key is shared with each `UserTicket`.
    users: Slots<Arc<str>>,
}

/// Why an upgrade was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Origin,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Origin => (
                StatusCode::FORBIDDEN,
                "WebSocket origin not allowed (see --public-origin and --allowed-origins)\n",
            )
                .into_response(),
        }
    }
}

/// One connection counted against its user; gives its place back on drop.
#[derive(Debug)]
pub struct UserTicket {
    admission: Arc<Admission>,
    user: Arc<str>,
}

impl Drop for UserTicket {
    fn drop(&mut self) {
        self.admission.users.give_back(&self.user);
    }
}

impl Admission {
    /// `origins`: every origin allowed, the server's own included; entries
    /// that are not `http(s)://host[:port]` are ignored (and logged).
    pub fn new(per_user: usize, origins: impl IntoIterator<Item = String>) -> Self {
        let origins = origins
            .into_iter()
            .filter_map(|origin| {
                let normalized = normalize_origin(&origin);
                if normalized.is_none() {
                    tracing::warn!(%origin, "ignoring an origin that is not http(s)://host[:port]");
                }
                normalized
            })
            .collect();
        Admission {
            origins,
            users: Slots::new(per_user),
        }
    }

    /// Users with at least one connection open on this node.
    pub fn connected_users(&self) -> Vec<String> {
        self.users
            .keys()
            .iter()
            .map(|user| user.to_string())
            .collect()
    }

    /// Counts a connection against `user` (once it has authenticated).
    pub fn admit_user(self: &Arc<Self>, user: &str) -> Option<UserTicket> {
        let user: Arc<str> = Arc::from(user);
        self.users.take(&user).then(|| UserTicket {
            admission: self.clone(),
            user,
        })
    }

    /// No `Origin` (not a browser), or an allowed one: scheme, host and
    /// port must all match. The `Host` header is the client's word and
    /// is not consulted.
    pub fn admit(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let allowed = origin
            .to_str()
            .ok()
            .and_then(normalize_origin)
            .is_some_and(|origin| self.origins.contains(&origin));
        if allowed {
            Ok(())
        } else {
            Err(Refusal::Origin)
        }
    }
}

/// `scheme://host:port` in lower case with the scheme's default port made
/// explicit; `None` for anything but an http(s) origin.
pub fn normalize_origin(origin: &str) -> Option<String> {
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, authority) = origin.split_once("://")?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    if authority.is_empty() || authority.contains(['/', '@', '?', '#']) {
        return None;
    }
    // `[::1]:4000`, `[::1]`, `host:4000`, `host`.
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    if has_port {
        let (host, port) = authority.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        (!host.is_empty()).then(|| format!("{scheme}://{host}:{port}"))
    } else {
        Some(format!("{scheme}://{authority}:{default_port}"))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(origin: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        // A Host naming the attacker's site changes nothing.
        headers.insert(header::HOST, HeaderValue::from_static("evil.example"));
        headers.insert(header::ORIGIN, HeaderValue::from_static(origin));
        headers
    }

    #[test]
    fn origins_match_on_scheme_host_and_port() {
        let admission = Admission::new(
            10,
            [
                "http://tidewire.local:4000".to_owned(),
                "https://app.example.com/".to_owned(),
            ],
        );
        assert!(
            admission.admit(&HeaderMap::new()).is_ok(),
            "no Origin: not a browser"
        );
        assert!(admission
            .admit(&headers("http://tidewire.local:4000"))
            .is_ok());
        assert!(admission.admit(&headers("https://app.example.com")).is_ok());
        assert!(admission
            .admit(&headers("https://APP.example.com:443"))
            .is_ok());
        for refused in [
            "https://tidewire.local:4000",
            "http://tidewire.local:4001",
            "http://app.example.com",
            "http://evil.example",
            "null",
        ] {
            assert_eq!(
                admission.admit(&headers(refused)),
                Err(Refusal::Origin),
                "{refused}"
            );
        }
    }

    #[test]
    fn origins_normalize() {
        assert_eq!(
            normalize_origin("HTTP://A.b/").as_deref(),
            Some("http://a.b:80")
        );
        assert_eq!(
            normalize_origin("http://[::1]:4000").as_deref(),
            Some("http://[::1]:4000")
        );
        assert_eq!(
            normalize_origin("http://[::1]").as_deref(),
            Some("http://[::1]:80")
        );
        for bad in [
            "ftp://a",
            "a.b",
            "http://",
            "http://a:x",
            "http://u@a",
            "null",
        ] {
            assert_eq!(normalize_origin(bad), None, "{bad}");
        }
    }

    #[test]
    fn connections_per_user_are_counted_and_given_back() {
        let admission = Arc::new(Admission::new(1, Vec::new()));
        let ann = admission.admit_user("ann").unwrap();
        assert!(admission.admit_user("ann").is_none());
        assert!(admission.admit_user("ben").is_some());
        drop(ann);
        assert!(admission.admit_user("ann").is_some());
    }
}
