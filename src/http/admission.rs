//! `Admission`: who may open a WebSocket — the origin allow-list against
//! cross-site WebSocket hijacking, and a cap on connections per address.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
};

use axum::{
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};

#[derive(Debug)]
pub struct Admission {
    per_address: usize,
    /// Origins allowed besides the server's own.
    origins: Vec<String>,
    open: Mutex<HashMap<IpAddr, usize>>,
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
        let mut open = self.admission.lock();
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

impl Admission {
    pub fn new(per_address: usize, origins: Vec<String>) -> Self {
        Admission {
            per_address,
            origins: origins
                .into_iter()
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .collect(),
            open: Mutex::new(HashMap::new()),
        }
    }

    pub fn admit(
        self: &Arc<Self>,
        headers: &HeaderMap,
        address: IpAddr,
    ) -> Result<Ticket, Refusal> {
        if !self.origin_allowed(headers) {
            return Err(Refusal::Origin);
        }
        let mut open = self.lock();
        let count = open.entry(address).or_insert(0);
        if *count >= self.per_address {
            return Err(Refusal::TooMany);
        }
        *count += 1;
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
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
        let admission = Arc::new(Admission::new(10, vec!["https://app.example.com/".into()]));
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
        let admission = Arc::new(Admission::new(2, Vec::new()));
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
    }
}
