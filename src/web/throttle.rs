//! Throttling of failed authentication, per client address: admin bearer tokens, dashboard
//! logins, customer access tokens and storefront signatures all draw on one budget per address.
//!
//! Each address has a bucket of `burst` tries; every failure takes one, and one comes back every
//! `60 s / per_minute`. An address with an empty bucket is refused with 429 and `Retry-After`
//! before its credential is even looked at, so guessing runs at `per_minute` tries a minute
//! instead of as fast as the server answers. Successes cost nothing. Real time (not the engine's
//! clock): it is about a client on the network.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header::RETRY_AFTER};
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// Addresses tracked at most; beyond it the fullest buckets (those nearest to forgiven) are
/// dropped first, so a flood from many addresses cannot grow memory without bound.
const MAX_TRACKED: usize = 50_000;

/// One address's budget.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Tries left, fractional as they refill continuously.
    tries: f64,
    /// When `tries` was last brought up to date.
    at: Instant,
}

/// The per-address failure budget.
#[derive(Debug)]
pub struct Throttle {
    /// Tries a fresh address has.
    burst: f64,
    /// Tries earned back per second.
    refill_per_sec: f64,
    /// Buckets of addresses that failed recently; a std mutex, nothing is awaited under it.
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl Throttle {
    /// A throttle allowing `burst` failures, then `per_minute` a minute.
    pub fn new(burst: u32, per_minute: u32) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            refill_per_sec: f64::from(per_minute.max(1)) / 60.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Bucket>> {
        // Every write under the lock is a single insert, update or removal: a poisoned map is
        // still consistent.
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn refilled(&self, b: Bucket, now: Instant) -> Bucket {
        let earned = now.saturating_duration_since(b.at).as_secs_f64() * self.refill_per_sec;
        Bucket {
            tries: (b.tries + earned).min(self.burst),
            at: now,
        }
    }

    /// `Err(wait)` when `addr` has no tries left: how long until it has one.
    pub fn check_at(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.lock();
        let Some(b) = buckets.get(&addr).copied() else {
            return Ok(());
        };
        let b = self.refilled(b, now);
        if b.tries >= self.burst {
            buckets.remove(&addr);
            return Ok(());
        }
        buckets.insert(addr, b);
        if b.tries >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - b.tries) / self.refill_per_sec,
            ))
        }
    }

    /// Takes one try from `addr` for a failed authentication.
    pub fn fail_at(&self, addr: IpAddr, now: Instant) {
        // A failure always counts, even from an address already out of tries.
        let _ = self.take(addr, now, false);
    }

    /// Takes one try from `addr`'s bucket; with `need_one`, refuses (the wait until one is back)
    /// instead when none is left.
    fn take(&self, addr: IpAddr, now: Instant, need_one: bool) -> Result<(), Duration> {
        let mut buckets = self.lock();
        let b = buckets.get(&addr).copied().unwrap_or(Bucket {
            tries: self.burst,
            at: now,
        });
        let mut b = self.refilled(b, now);
        if need_one && b.tries < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - b.tries) / self.refill_per_sec);
            buckets.insert(addr, b);
            return Err(wait);
        }
        b.tries = (b.tries - 1.0).max(0.0);
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&addr) {
            let fullest = buckets
                .iter()
                .max_by(|x, y| x.1.tries.total_cmp(&y.1.tries))
                .map(|(k, _)| *k);
            if let Some(k) = fullest {
                buckets.remove(&k);
            }
        }
        buckets.insert(addr, b);
        Ok(())
    }

    /// Takes one try from `addr` before a credential is checked, so that requests checked
    /// concurrently cannot all pass a check made before any of them failed: `Err(wait)` when
    /// none is left. A try given back with [`Throttle::give_back_at`] (the credential was right)
    /// costs nothing.
    pub fn reserve_at(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        self.take(addr, now, true)
    }

    /// Gives back the try [`Throttle::reserve_at`] took, when the credential was right.
    pub fn give_back_at(&self, addr: IpAddr, now: Instant) {
        let mut buckets = self.lock();
        if let Some(b) = buckets.get(&addr).copied() {
            let mut b = self.refilled(b, now);
            b.tries = (b.tries + 1.0).min(self.burst);
            if b.tries >= self.burst {
                buckets.remove(&addr);
            } else {
                buckets.insert(addr, b);
            }
        }
    }

    /// [`Throttle::reserve_at`] now, as the 429 to answer.
    ///
    /// # Errors
    /// The 429 when `addr` is throttled.
    pub fn reserve(&self, addr: IpAddr) -> Result<(), Throttled> {
        self.reserve_at(addr, Instant::now()).map_err(|wait| {
            metrics::counter!("provisioner_auth_throttled_total").increment(1);
            Throttled(wait)
        })
    }

    /// [`Throttle::give_back_at`] now.
    pub fn give_back(&self, addr: IpAddr) {
        self.give_back_at(addr, Instant::now());
    }

    /// Judges one credential under `addr`'s budget: a try is taken before `check` runs, so
    /// guesses checked concurrently on every runtime thread cannot outrun the throttle, and it is
    /// given back when the credential was right, or when `guessed` says the refusal was not a
    /// guess (no credential was offered at all).
    ///
    /// # Errors
    /// The 429 when `addr` is throttled; `check` is then not run.
    pub fn judge<T, E>(
        &self,
        addr: IpAddr,
        check: impl FnOnce() -> Result<T, E>,
        guessed: impl FnOnce(&E) -> bool,
    ) -> Result<Result<T, E>, Throttled> {
        self.reserve(addr)?;
        let verdict = check();
        match &verdict {
            Err(refusal) if guessed(refusal) => {
                metrics::counter!("provisioner_auth_failures_total").increment(1);
                tracing::debug!(client = %addr, "failed authentication counted against the client");
            }
            _ => self.give_back(addr),
        }
        Ok(verdict)
    }

    /// [`Throttle::check_at`] now, as the 429 to answer.
    ///
    /// # Errors
    /// The 429 when `addr` is throttled.
    pub fn check(&self, addr: IpAddr) -> Result<(), Throttled> {
        self.check_at(addr, Instant::now()).map_err(|wait| {
            metrics::counter!("provisioner_auth_throttled_total").increment(1);
            Throttled(wait)
        })
    }
}

/// A refusal for too many failed authentications: 429 with `Retry-After` in whole seconds.
#[derive(Debug)]
pub struct Throttled(pub Duration);

impl Throttled {
    /// Seconds to wait, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let whole = self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0);
        whole.max(1)
    }
}

impl From<Throttled> for ApiError {
    fn from(t: Throttled) -> Self {
        ApiError::throttled(t.retry_after_secs())
    }
}

impl IntoResponse for Throttled {
    fn into_response(self) -> Response {
        let secs = self.retry_after_secs();
        let mut r = (
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many failed authentications from this address; retry in {secs} s"),
        )
            .into_response();
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
        r
    }
}

/// The client's address: the TCP peer, as the server recorded it for the connection. Requests
/// handed to the router without one (in-process tests) share the unspecified address.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<std::net::SocketAddr>>()
                .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_failures_then_the_refill_rate() {
        let t = Throttle::new(3, 6); // one try back every 10 s
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(t.check_at(a, t0).is_ok());
            t.fail_at(a, t0);
        }
        let wait = t.check_at(a, t0).unwrap_err();
        assert!(
            wait > Duration::from_secs(9) && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
        assert!(
            t.check_at(other, t0).is_ok(),
            "other addresses are not affected"
        );
        // Ten seconds earn one try back, and only one.
        let t1 = t0 + Duration::from_secs(10);
        assert!(t.check_at(a, t1).is_ok());
        t.fail_at(a, t1);
        assert!(t.check_at(a, t1).is_err());
        // After the full refill the address is forgotten.
        let t2 = t1 + Duration::from_secs(60);
        assert!(t.check_at(a, t2).is_ok());
        assert!(t.lock().is_empty());
    }

    #[test]
    fn reserving_before_checking_bounds_concurrent_guesses() {
        let t = Throttle::new(3, 6);
        let a: IpAddr = "192.0.2.9".parse().unwrap();
        let t0 = Instant::now();
        // Four guesses in flight at once: the fourth is refused before it is checked.
        let admitted = (0..4).filter(|_| t.reserve_at(a, t0).is_ok()).count();
        assert_eq!(admitted, 3);
        // A right credential gives its try back.
        t.give_back_at(a, t0);
        assert!(t.reserve_at(a, t0).is_ok());
        assert!(t.reserve_at(a, t0).is_err());
    }

    #[test]
    fn judging_counts_guesses_only() {
        let t = Throttle::new(2, 1);
        let a: IpAddr = "192.0.2.10".parse().unwrap();
        // A right credential and a request with none cost nothing, however many.
        for _ in 0..5 {
            assert_eq!(t.judge(a, || Ok::<_, bool>(7), |_| true).unwrap(), Ok(7));
            assert!(t.judge(a, || Err::<(), _>(false), |g| *g).unwrap().is_err());
        }
        // Two guesses use the budget up; the third is refused before it is checked.
        for _ in 0..2 {
            assert!(t.judge(a, || Err::<(), _>(true), |g| *g).unwrap().is_err());
        }
        let mut checked = false;
        let refused = t.judge(
            a,
            || {
                checked = true;
                Ok::<(), bool>(())
            },
            |g| *g,
        );
        assert!(refused.is_err() && !checked);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(Throttled(Duration::from_millis(1500)).retry_after_secs(), 2);
        assert_eq!(Throttled(Duration::from_secs(3)).retry_after_secs(), 3);
        assert_eq!(Throttled(Duration::ZERO).retry_after_secs(), 1);
    }

    #[test]
    fn memory_is_bounded() {
        let t = Throttle::new(2, 1);
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 10) {
            t.fail_at(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(t.lock().len() <= MAX_TRACKED);
    }
}
