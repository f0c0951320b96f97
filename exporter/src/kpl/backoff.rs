//! Retry delays: exponential from a base, capped, with jitter so that retries spread out.

use std::time::Duration;

/// Delay before attempt `retry` (1 for the first retry): uniformly random in the upper half
/// of `min(base * 2^(retry-1), cap)` ("equal jitter"), so it grows, never exceeds the cap, and
/// two producers throttled together do not retry in step.
pub fn delay(retry: u32, base: Duration, cap: Duration, unit_random: f64) -> Duration {
    let exponent = retry.saturating_sub(1).min(32);
    let ceiling = base
        .checked_mul(1u32 << exponent.min(31))
        .unwrap_or(cap)
        .min(cap);
    let half = ceiling / 2;
    half + half.mul_f64(unit_random.clamp(0.0, 1.0))
}

/// Delay between retries once the producer is shutting down: its deadline bounds them then,
/// and a long backoff would only turn records Kinesis could take into drops at the deadline.
pub const WHILE_SHUTTING_DOWN: Duration = Duration::from_millis(100);

/// The same with a fresh random draw.
pub fn jittered_delay(retry: u32, base: Duration, cap: Duration) -> Duration {
    delay(retry, base, cap, rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(60);

    #[test]
    fn grows_exponentially_within_jitter_bounds() {
        for retry in 1..=8u32 {
            let ceiling = BASE * 2u32.pow(retry - 1);
            assert_eq!(delay(retry, BASE, CAP, 0.0), ceiling / 2);
            assert_eq!(delay(retry, BASE, CAP, 1.0), ceiling);
        }
    }

    #[test]
    fn never_exceeds_the_cap_even_for_huge_retry_counts() {
        for retry in [11, 20, 31, 32, 33, 1000, u32::MAX] {
            let d = delay(retry, BASE, CAP, 1.0);
            assert!(d <= CAP, "retry {retry}: {d:?}");
            assert!(delay(retry, BASE, CAP, 0.0) >= CAP / 2);
        }
    }
}
