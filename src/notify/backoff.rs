//! The wait before a failed delivery is tried again: exponential backoff with full jitter.
//!
//! Full jitter (a uniform draw between zero and the exponential ceiling) spreads the retries of
//! many deliveries that failed together, say when a receiver was down, instead of sending them
//! back in synchronised waves when it comes up.

use std::time::Duration;

use rand::Rng;

/// The wait before retry `n` (0 for the first retry): uniform in `[0, min(cap, base * 2^n)]`.
pub fn backoff(n: u32, base: Duration, cap: Duration, rng: &mut impl Rng) -> Duration {
    // 2^30 times any sensible base is past any sensible cap; the clamp only avoids overflow.
    let ceiling = base.saturating_mul(1u32 << n.min(30)).min(cap);
    let ceiling_ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rng.random_range(0..=ceiling_ms))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    proptest! {
        #[test]
        fn stays_within_the_exponential_ceiling(
            n in 0u32..64,
            base_ms in 1u64..60_000,
            cap_ms in 1u64..86_400_000,
            seed in any::<u64>(),
        ) {
            let (base, cap) = (Duration::from_millis(base_ms), Duration::from_millis(cap_ms));
            let wait = backoff(n, base, cap, &mut SmallRng::seed_from_u64(seed));
            let ceiling = u128::from(base_ms).saturating_mul(1u128 << n.min(30)).min(u128::from(cap_ms));
            prop_assert!(wait.as_millis() <= ceiling, "{wait:?} > {ceiling} ms");
        }
    }

    #[test]
    fn jitter_spreads_over_the_whole_range() {
        let mut rng = SmallRng::seed_from_u64(7);
        let (base, cap) = (Duration::from_secs(5), Duration::from_secs(3600));
        let waits: Vec<Duration> = (0..1000).map(|_| backoff(3, base, cap, &mut rng)).collect();
        // Ceiling 40 s: full jitter reaches both ends, not just the top.
        assert!(waits.iter().any(|w| *w < Duration::from_secs(4)));
        assert!(waits.iter().any(|w| *w > Duration::from_secs(36)));
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(40)));
        // Far past the cap the ceiling is the cap.
        let late: Vec<Duration> = (0..1000)
            .map(|_| backoff(40, base, cap, &mut rng))
            .collect();
        assert!(late.iter().all(|w| *w <= cap));
        assert!(late.iter().any(|w| *w > Duration::from_secs(3000)));
    }
}
