//! Password hashing: argon2id with a random salt, on blocking threads, at
//! most one hash per core at a time.
//!
//! One argon2id hash with the default parameters takes 19 MiB and a core
//! for tens of milliseconds, so unbounded it lets a burst of `signUp`s
//! exhaust memory. A [`Gate`] admits one hash per core; a bounded number of
//! callers wait their turn for a bounded time, the rest are turned away
//! ([`PasswordError::Busy`], `RATE_LIMITED` for clients).

use std::{
    num::NonZeroUsize,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use argon2::{
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Callers that may wait for a free core, per core.
const WAITING_PER_CORE: usize = 16;
/// Longest a caller waits for a free core.
const MAX_WAIT: Duration = Duration::from_secs(5);

/// A hash of a random password nobody knows, with the default parameters:
/// a sign-in for an unknown email verifies against it, so it takes as long
/// as one with a wrong password.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$nSS1bytZ3irvY1qreUY2cA$3WLrghi3Dl5HvqNsTRy8Q/nWNMh+gznClyjnRIBFLk0";

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("too many passwords are being checked right now; try again shortly")]
    Busy,
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// argon2id with a random salt.
pub async fn hash_password(password: String) -> Result<String, PasswordError> {
    gate()
        .run(move || {
            let mut bytes = [0u8; 16];
            std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
            let salt =
                SaltString::encode_b64(&bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .await?
        .map_err(|e| PasswordError::Failed(e.to_string()))
}

/// Whether `password` matches `hash`. A stored hash that does not parse
/// matches nothing.
pub(super) async fn verify_password(password: String, hash: String) -> Result<bool, PasswordError> {
    gate().run(move || verify(&password, &hash)).await
}

/// The work of a wrong-password check, for an email without an account.
pub(super) async fn verify_against_dummy(password: String) -> Result<(), PasswordError> {
    gate()
        .run(move || {
            // black_box: the result is unused, yet the work must happen.
            std::hint::black_box(verify(&password, DUMMY_HASH));
        })
        .await
}

fn verify(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// The process's gate: hashing competes for the same cores whichever server
/// or command asks.
fn gate() -> &'static Gate {
    static GATE: OnceLock<Gate> = OnceLock::new();
    GATE.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Gate::new(cores, cores * WAITING_PER_CORE, MAX_WAIT)
    })
}

/// Admits at most `permits` jobs at once; at most `max_waiting` more wait,
/// each for at most `max_wait`.
struct Gate {
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
    max_wait: Duration,
}

impl Gate {
    fn new(permits: usize, max_waiting: usize, max_wait: Duration) -> Self {
        Gate {
            permits: Arc::new(Semaphore::new(permits)),
            waiting: AtomicUsize::new(0),
            max_waiting,
            max_wait,
        }
    }

    /// Runs `work` on a blocking thread once admitted. The permit goes with
    /// the work: a caller that gives up does not free its core before the
    /// hash is done.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let permit = self.admit().await?;
        tokio::task::spawn_blocking(move || {
            let result = work();
            drop(permit);
            result
        })
        .await
        .map_err(|e| PasswordError::Failed(e.to_string()))
    }

    async fn admit(&self) -> Result<OwnedSemaphorePermit, PasswordError> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let _place = Place::take(&self.waiting, self.max_waiting).ok_or(PasswordError::Busy)?;
        match tokio::time::timeout(self.max_wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // Timed out, or the semaphore was closed (never happens).
            _ => Err(PasswordError::Busy),
        }
    }
}

/// A place in the waiting line, given back on drop.
struct Place<'a>(&'a AtomicUsize);

impl<'a> Place<'a> {
    fn take(waiting: &'a AtomicUsize, max: usize) -> Option<Self> {
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Place(waiting))
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse".into(), hash.clone())
            .await
            .unwrap());
        assert!(!verify_password("wrong horse".into(), hash.clone())
            .await
            .unwrap());
        assert!(!verify_password("correct horse".into(), "garbage".into())
            .await
            .unwrap());
        assert_ne!(
            hash,
            hash_password("correct horse".into()).await.unwrap(),
            "salted"
        );
    }

    #[tokio::test]
    async fn the_dummy_hash_costs_what_a_real_one_costs() {
        let real = hash_password("correct horse".into()).await.unwrap();
        let params = |hash: &str| {
            let parsed = PasswordHash::new(hash).unwrap();
            (
                parsed.algorithm.to_string(),
                parsed.version,
                parsed.params.to_string(),
            )
        };
        assert_eq!(params(DUMMY_HASH), params(&real));
        verify_against_dummy("anything".into()).await.unwrap();
    }

    #[tokio::test]
    async fn the_gate_admits_a_bounded_number_and_turns_the_rest_away() {
        let gate = Arc::new(Gate::new(1, 1, Duration::from_secs(5)));
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (started, mut running) = tokio::sync::mpsc::unbounded_channel();
        let busy = {
            let gate = gate.clone();
            tokio::spawn(async move {
                gate.run(move || {
                    let _ = started.send(());
                    let _ = released.recv();
                })
                .await
            })
        };
        running.recv().await.unwrap();
        // One waits for the core…
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.run(|| 7).await })
        };
        while gate.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        // …and the line is full.
        assert!(matches!(gate.run(|| 0).await, Err(PasswordError::Busy)));
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();
        assert_eq!(waiter.await.unwrap().unwrap(), 7);
        assert_eq!(gate.waiting.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_caller_waits_a_bounded_time() {
        let gate = Gate::new(0, 4, Duration::from_millis(50));
        assert!(matches!(gate.run(|| ()).await, Err(PasswordError::Busy)));
        assert_eq!(gate.waiting.load(Ordering::Acquire), 0);
    }
}
