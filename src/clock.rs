//! The `Clock` port: every timestamp and every wait in the engine comes from here.
//!
//! Two implementations:
//! - [`SystemClock`]: wall-clock time, for `serve` across processes and machines.
//! - [`ScaledClock`]: time derived from tokio's clock, optionally sped up. Under tokio's paused
//!   time (`start_paused = true`) it is a fully virtual clock, so the seed's 15-minute worst case
//!   runs in milliseconds; with a speed of 60 it is the demo's compressed clock.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch. Stored as an integer in every backend so comparisons in SQL
/// are exact and no backend's own idea of "now" is ever used.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The timestamp `d` after this one (saturating).
    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// The timestamp `d` before this one (saturating).
    pub fn minus(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0 - earlier.0).unwrap_or(0))
    }

    /// Milliseconds since the epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    fn system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(u64::try_from(self.0).unwrap_or(0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_rfc3339_millis(self.system_time())
        )
    }
}

/// A boxed future, so `Clock` stays object-safe.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where time comes from.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
    /// How long `d` of this clock's time lasts on tokio's timer (what a real socket timeout or a
    /// `tokio::time::sleep` must be given).
    fn real(&self, d: Duration) -> Duration;
    /// Waits `d` of this clock's time.
    fn sleep(&self, d: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(self.real(d)))
    }
}

/// Wall-clock time.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        Timestamp(i64::try_from(ms).unwrap_or(i64::MAX))
    }

    fn real(&self, d: Duration) -> Duration {
        d
    }
}

/// Time that starts at a chosen timestamp and runs `speed` times as fast as tokio's clock.
#[derive(Clone, Debug)]
pub struct ScaledClock {
    /// tokio's instant at creation; elapsed time is measured from it so paused time works.
    origin: tokio::time::Instant,
    /// The timestamp this clock reads at `origin`.
    start: Timestamp,
    /// How many clock seconds pass per tokio second.
    speed: f64,
}

impl ScaledClock {
    /// A clock reading `start` now and advancing `speed` times as fast as tokio's timer.
    ///
    /// # Panics
    /// Never; a speed that is not finite and positive is treated as 1.
    pub fn new(start: Timestamp, speed: f64) -> Self {
        let speed = if speed.is_finite() && speed > 0.0 {
            speed
        } else {
            1.0
        };
        Self {
            origin: tokio::time::Instant::now(),
            start,
            speed,
        }
    }

    /// A virtual clock for tests: starts at a fixed, readable date and runs at tokio's pace.
    pub fn virtual_at_epoch() -> Self {
        // 2026-01-01T00:00:00Z: a fixed origin keeps test timelines reproducible.
        Self::new(Timestamp(1_767_225_600_000), 1.0)
    }

    /// The clock's speed factor.
    pub fn speed(&self) -> f64 {
        self.speed
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> Timestamp {
        let elapsed = self.origin.elapsed().as_secs_f64() * self.speed * 1000.0;
        Timestamp(self.start.0 + elapsed.round() as i64)
    }

    fn real(&self, d: Duration) -> Duration {
        d.div_f64(self.speed)
    }
}

/// A duration as an operator reads it: `850ms` under a second, `51.4s` under a minute, then
/// `7m 10s` and `1h 2m 3s` (whole seconds: past a minute, tenths are noise).
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        // Tenths, rounded down so that 59.96 s does not read as "60.0s".
        return format!("{}.{}s", ms / 1000, (ms % 1000) / 100);
    }
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    match (h, s) {
        (0, 0) => format!("{m}m"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m {s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_human_units() {
        let ms = Duration::from_millis;
        assert_eq!(human_duration(ms(0)), "0ms");
        assert_eq!(human_duration(ms(850)), "850ms");
        assert_eq!(human_duration(ms(51_412)), "51.4s");
        assert_eq!(human_duration(ms(59_999)), "59.9s");
        assert_eq!(human_duration(ms(120_000)), "2m");
        assert_eq!(human_duration(ms(430_400)), "7m 10s");
        assert_eq!(human_duration(ms(3_723_000)), "1h 2m 3s");
    }

    #[tokio::test(start_paused = true)]
    async fn scaled_clock_follows_paused_tokio_time() {
        let clock = ScaledClock::new(Timestamp(1_000), 60.0);
        assert_eq!(clock.now(), Timestamp(1_000));
        clock.sleep(Duration::from_secs(120)).await;
        assert_eq!(clock.now(), Timestamp(121_000));
        assert_eq!(clock.real(Duration::from_secs(120)), Duration::from_secs(2));
    }

    #[test]
    fn timestamp_arithmetic_saturates() {
        assert_eq!(Timestamp(5).since(Timestamp(10)), Duration::ZERO);
        assert_eq!(Timestamp(5).plus(Duration::from_millis(7)), Timestamp(12));
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000Z");
    }
}
