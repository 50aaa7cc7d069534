//! smoltcp's clock: the caller's time run `scale` times faster.
//!
//! smoltcp 0.14 never retransmits sooner than one second after a segment left
//! (`RTTE_MIN_RTO`, fixed), however short the measured round trip, and its loss recovery
//! beyond one fast retransmit per episode is a retransmission timeout. On a virtual link whose
//! round trip is well under a millisecond a download under random loss spends most of its time
//! waiting out that second (docs/robustness.md, "Loss recovery"). The stack therefore hands
//! smoltcp a clock that runs faster than the caller's: with the default scale of 20,
//! smoltcp's one-second floor is 50 ms of the caller's time. Every duration the stack gives
//! smoltcp (socket timeouts, the delayed-ACK time) is scaled up by the same factor and every
//! delay smoltcp reports back (`poll_delay`) scaled down, so what the caller sees is unchanged
//! except for smoltcp's own fixed constants, which all shrink by the factor (see
//! `TcpConfig::clock_scale`). Round-trip times smoltcp measures are scaled too, so a
//! retransmission timeout computed from them (above the floor) is the same in the caller's time.

use smoltcp::time::{Duration, Instant};

/// Converts between the caller's time and smoltcp's faster one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Clock {
    scale: u32,
}

impl Clock {
    /// A clock running `scale` times faster than the caller's (1: the same; 0 counts as 1).
    pub(crate) fn new(scale: u32) -> Self {
        Clock {
            scale: scale.max(1),
        }
    }

    /// The instant smoltcp is told for the caller's `now`.
    pub(crate) fn to_smoltcp(self, now: Instant) -> Instant {
        Instant::from_micros(now.total_micros().saturating_mul(i64::from(self.scale)))
    }

    /// A duration of the caller's time as smoltcp's (a timeout handed to a socket).
    pub(crate) fn duration_to_smoltcp(self, d: Duration) -> Duration {
        Duration::from_micros(d.total_micros().saturating_mul(u64::from(self.scale)))
    }

    /// A delay smoltcp reports, in the caller's time, rounded up so that polling after it
    /// never comes before smoltcp's deadline (an early poll would find nothing due and ask
    /// again at once).
    pub(crate) fn duration_from_smoltcp(self, d: Duration) -> Duration {
        Duration::from_micros(d.total_micros().div_ceil(u64::from(self.scale)))
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn scale_one_changes_nothing_and_zero_counts_as_one() {
        for clock in [Clock::new(1), Clock::new(0)] {
            let t = Instant::from_micros(123_456_789);
            assert_eq!(clock.to_smoltcp(t), t);
            let d = Duration::from_micros(4_321);
            assert_eq!(clock.duration_to_smoltcp(d), d);
            assert_eq!(clock.duration_from_smoltcp(d), d);
        }
    }

    #[test]
    fn times_and_durations_scale_both_ways() {
        let clock = Clock::new(5);
        assert_eq!(
            clock.to_smoltcp(Instant::from_millis(200)),
            Instant::from_millis(1000)
        );
        assert_eq!(
            clock.duration_to_smoltcp(Duration::from_secs(60)),
            Duration::from_secs(300)
        );
        // smoltcp's fixed one-second minimum RTO is 200 ms of the caller's time.
        assert_eq!(
            clock.duration_from_smoltcp(Duration::from_secs(1)),
            Duration::from_millis(200)
        );
        // A deadline between two of the caller's microseconds: the later one.
        assert_eq!(
            clock.duration_from_smoltcp(Duration::from_micros(11)),
            Duration::from_micros(3)
        );
        assert_eq!(clock.duration_from_smoltcp(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn a_deadline_reported_back_is_never_early() {
        let clock = Clock::new(7);
        for now_us in [0i64, 1, 6, 999_999, 1_234_567] {
            for delay_us in [0u64, 1, 6, 7, 8, 1_000_000, 1_000_003] {
                let now = Instant::from_micros(now_us);
                let back = clock.duration_from_smoltcp(Duration::from_micros(delay_us));
                // Polling the caller's `now + back` shows smoltcp a time at or past its deadline.
                assert!(
                    clock.to_smoltcp(now + back)
                        >= clock.to_smoltcp(now) + Duration::from_micros(delay_us),
                    "now {now_us} delay {delay_us}"
                );
            }
        }
    }

    #[test]
    fn far_times_saturate_instead_of_overflowing() {
        let clock = Clock::new(1000);
        let far = Instant::from_micros(i64::MAX / 2);
        assert_eq!(clock.to_smoltcp(far), Instant::from_micros(i64::MAX));
        assert_eq!(
            clock.duration_to_smoltcp(Duration::from_micros(u64::MAX / 2)),
            Duration::from_micros(u64::MAX)
        );
    }
}
