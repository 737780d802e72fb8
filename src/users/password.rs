//! Passwords: the canonical secret (`md5_hex(plain)`, compat §3), argon2id hashing off the async
//! workers behind one process-wide semaphore, legacy md5 rows, and rehash decisions.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};

use argon2::password_hash::phc::PasswordHash;
use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, PasswordVerifier as _, Version};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::error::InternalError;

/// One pool of hashing threads for the whole process (one per core): however many workers or
/// services exist, at most this many hashes run at once, off the async workers, and hashing memory
/// stays bounded by threads × m_cost (each thread's allocator reuses its own freed blocks).
static HASH_POOL: LazyLock<rayon::ThreadPool> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    rayon::ThreadPoolBuilder::new()
        .num_threads(cores)
        .thread_name(|i| format!("password-hash-{i}"))
        // A panicking job fails its caller (its channel closes); it must not abort the process.
        .panic_handler(|_| tracing::error!("a password hashing job panicked"))
        .build()
        .expect("start the password hashing threads")
});

/// Hashes queued or running whose callers still wait, process-wide (what
/// `coronium_password_hash_queue` shows). A job whose caller is gone is skipped when its turn
/// comes, or, when already running, finishes uncounted (at most one per thread).
static QUEUED: AtomicUsize = AtomicUsize::new(0);
/// How long one hash has taken lately, in microseconds (a moving average; the configured cost on
/// this machine). Starts at a guess and learns from the first hashes.
static HASH_MICROS: AtomicU64 = AtomicU64::new(50_000);

/// The longest a hash should wait for a thread: the queue holds what the threads clear in that
/// time, and past it a request is answered "busy" at once rather than after a wait its client
/// gives up on.
const MAX_WAIT_MICROS: u64 = 1_000_000;
/// Bounds on the queue whatever the hashes cost.
const MIN_QUEUED_PER_THREAD: usize = 4;
const MAX_QUEUED: usize = 10_000;

fn queue_cap() -> usize {
    let threads = HASH_POOL.current_num_threads();
    let per_thread = (MAX_WAIT_MICROS / HASH_MICROS.load(Ordering::Relaxed).max(1)) as usize;
    (threads * per_thread.max(MIN_QUEUED_PER_THREAD)).min(MAX_QUEUED)
}

fn micros(took: std::time::Duration) -> u64 {
    took.as_micros().min(u128::from(u32::MAX)) as u64
}

/// Folds one hash's time into the average (an eighth of the way each time).
fn learn(took: std::time::Duration) {
    let took = micros(took);
    let _ = HASH_MICROS.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
        Some((avg * 7 + took) / 8)
    });
}

/// One waiting caller's place in the queue: given back when the caller has its hash or is
/// dropped, so the count (and the gauge) stays exact.
struct Place;

impl Place {
    fn take() -> Option<Place> {
        if QUEUED.fetch_add(1, Ordering::AcqRel) >= queue_cap() {
            QUEUED.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        metrics::gauge!("coronium_password_hash_queue").increment(1.0);
        Some(Place)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        QUEUED.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("coronium_password_hash_queue").decrement(1.0);
    }
}

/// `md5_hex(s)` in lower case, as the Coronium client computes it.
pub fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

/// The canonical password secret: what clients send and what argon2 hashes.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// From a plain password typed in Lua: hash it the way the client plugin does.
    pub fn from_plain(plain: &str) -> Self {
        Secret(md5_hex(plain))
    }

    /// From a value that already is the canonical secret (wire calls).
    pub fn from_canonical(secret: &str) -> Self {
        Secret(secret.to_owned())
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// argon2id cost parameters (configurable; the defaults are OWASP's baseline).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HashParams {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for HashParams {
    fn default() -> Self {
        HashParams {
            m_cost: 19_456,
            t_cost: 2,
            p_cost: 1,
        }
    }
}

/// What checking a password against a stored hash found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub matched: bool,
    /// The stored hash is legacy md5 or uses other parameters than the configured ones.
    pub needs_rehash: bool,
}

pub struct PasswordHasher {
    params: Params,
    /// A hash of a random secret with the current parameters, verified against when the user
    /// does not exist so that the answer takes as long as for a real user. Made on start, on the
    /// hashing pool, by the same hash that measures what the parameters cost.
    dummy: Arc<OnceLock<String>>,
}

impl PasswordHasher {
    pub fn new(params: HashParams) -> Result<Self, InternalError> {
        let params = Params::new(params.m_cost, params.t_cost, params.p_cost, None)
            .map_err(|e| InternalError::Hashing(format!("invalid argon2 parameters: {e}")))?;
        // The dummy hash, made in the background, also tells what these parameters cost here,
        // so the queue's bound fits them from the first flood on.
        let dummy = Arc::new(OnceLock::new());
        let (timed, made) = (params.clone(), dummy.clone());
        HASH_POOL.spawn(move || {
            let started = std::time::Instant::now();
            let hashed = Self::argon2(timed).hash_password(Self::random_secret().as_bytes());
            HASH_MICROS.store(micros(started.elapsed()).max(1), Ordering::Relaxed);
            if let Ok(hashed) = hashed {
                let _ = made.set(hashed.to_string());
            }
        });
        Ok(PasswordHasher { params, dummy })
    }

    fn argon2(params: Params) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }

    /// Runs CPU-heavy work on the hashing pool and waits for it without blocking the caller's
    /// thread. Work whose caller has gone (a client that hung up drops its request) is skipped
    /// when its turn comes; a full queue answers [`InternalError::Busy`] at once.
    async fn off_worker<T: Send + 'static>(
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, InternalError> {
        // Held by the waiting caller: a caller that is dropped gives its place back at once,
        // and its job, still queued, is skipped when a thread reaches it.
        let _place = Place::take().ok_or(InternalError::Busy)?;
        let (done, result) = tokio::sync::oneshot::channel();
        HASH_POOL.spawn(move || {
            if done.is_closed() {
                metrics::counter!("coronium_password_hashes_skipped_total").increment(1);
                return;
            }
            let started = std::time::Instant::now();
            let outcome = work();
            learn(started.elapsed());
            let _ = done.send(outcome);
        });
        result
            .await
            .map_err(|_| InternalError::Hashing("the hashing thread failed".into()))
    }

    /// The PHC string of argon2id(secret) with the configured parameters.
    pub async fn hash(&self, secret: &Secret) -> Result<String, InternalError> {
        let params = self.params.clone();
        let secret = secret.clone();
        Self::off_worker(move || {
            Self::argon2(params)
                .hash_password(secret.as_bytes())
                .map(|h| h.to_string())
        })
        .await?
        .map_err(|e| InternalError::Hashing(e.to_string()))
    }

    fn random_secret() -> Secret {
        Secret::from_canonical(&uuid::Uuid::new_v4().simple().to_string())
    }

    async fn dummy_hash(&self) -> Result<&str, InternalError> {
        // Asked for before the one made on start is ready: made here (either may win the set).
        if self.dummy.get().is_none() {
            let hashed = self.hash(&Self::random_secret()).await?;
            let _ = self.dummy.set(hashed);
        }
        Ok(self.dummy.get().map_or("", String::as_str))
    }

    /// Checks `secret` against a stored hash; `None` (no such user) costs a full verification
    /// all the same and never matches.
    pub async fn verify(
        &self,
        secret: &Secret,
        stored: Option<&str>,
    ) -> Result<Verdict, InternalError> {
        let (stored, exists) = match stored {
            Some(s) => (s.to_owned(), true),
            None => (self.dummy_hash().await?.to_owned(), false),
        };
        if is_legacy_md5(&stored) {
            let matched: bool = stored
                .to_ascii_lowercase()
                .as_bytes()
                .ct_eq(secret.as_bytes())
                .into();
            return Ok(Verdict {
                matched,
                needs_rehash: true,
            });
        }
        let configured = self.params.clone();
        let secret = secret.clone();
        let verdict = Self::off_worker(move || {
            let Ok(parsed) = PasswordHash::new(&stored) else {
                tracing::warn!("stored password hash is neither argon2 nor md5; login refused");
                return Verdict {
                    matched: false,
                    needs_rehash: false,
                };
            };
            let matched = Self::argon2(configured.clone())
                .verify_password(secret.as_bytes(), &parsed)
                .is_ok();
            let same_params = parsed.algorithm.as_str() == "argon2id"
                && Params::try_from(&parsed).is_ok_and(|p| {
                    p.m_cost() == configured.m_cost()
                        && p.t_cost() == configured.t_cost()
                        && p.p_cost() == configured.p_cost()
                });
            Verdict {
                matched,
                needs_rehash: !same_params,
            }
        })
        .await?;
        Ok(Verdict {
            matched: verdict.matched && exists,
            ..verdict
        })
    }
}

/// Coronium ≤ 2.6 stored the canonical secret itself: 32 hex digits.
fn is_legacy_md5(stored: &str) -> bool {
    stored.len() == 32 && stored.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> PasswordHasher {
        PasswordHasher::new(HashParams {
            m_cost: 64,
            t_cost: 1,
            p_cost: 1,
        })
        .unwrap()
    }

    #[test]
    fn md5_hex_matches_the_client_plugin() {
        assert_eq!(md5_hex("abcd1234"), "e19d5cd5af0378da05f63f891c7467af");
    }

    #[tokio::test]
    async fn hash_then_verify_and_rehash_on_parameter_change() {
        let hasher = cheap();
        let secret = Secret::from_plain("abcd1234");
        let stored = hasher.hash(&secret).await.unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        let ok = hasher.verify(&secret, Some(&stored)).await.unwrap();
        assert_eq!(
            ok,
            Verdict {
                matched: true,
                needs_rehash: false
            }
        );
        let wrong = hasher
            .verify(&Secret::from_plain("nope"), Some(&stored))
            .await
            .unwrap();
        assert!(!wrong.matched);
        let stronger = PasswordHasher::new(HashParams {
            m_cost: 128,
            t_cost: 1,
            p_cost: 1,
        })
        .unwrap();
        let v = stronger.verify(&secret, Some(&stored)).await.unwrap();
        assert_eq!(
            v,
            Verdict {
                matched: true,
                needs_rehash: true
            }
        );
    }

    #[tokio::test]
    async fn legacy_md5_and_missing_user() {
        let hasher = cheap();
        let secret = Secret::from_plain("abcd1234");
        let legacy = md5_hex("abcd1234").to_uppercase();
        let v = hasher.verify(&secret, Some(&legacy)).await.unwrap();
        assert_eq!(
            v,
            Verdict {
                matched: true,
                needs_rehash: true
            }
        );
        assert!(
            !hasher
                .verify(&Secret::from_plain("x"), Some(&legacy))
                .await
                .unwrap()
                .matched
        );
        let dummy_secret = Secret::from_canonical(hasher.dummy_hash().await.unwrap());
        assert!(!hasher.verify(&dummy_secret, None).await.unwrap().matched);
        assert!(!hasher.verify(&secret, None).await.unwrap().matched);
    }
}
