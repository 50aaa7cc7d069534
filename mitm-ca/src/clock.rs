//! Injected time: nothing in this crate reads a clock by itself.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::time_provider::TimeProvider;
use rustls_pki_types::UnixTime;

/// The source of wall-clock time for certificate validity checks and issuance.
/// Injected so the crate runs the same in a browser (no `SystemTime::now()`), natively and in tests.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time as seconds since the Unix epoch.
    fn now(&self) -> UnixTime;
}

/// A clock that says whatever it was last set to; for tests and for callers that pass the time
/// explicitly (e.g. the browser glue updating it from `Date.now()`).
#[derive(Debug, Default)]
pub struct FixedClock(AtomicU64);

impl FixedClock {
    /// A clock stopped at `secs` seconds since the Unix epoch.
    pub fn new(secs: u64) -> Self {
        Self(AtomicU64::new(secs))
    }

    /// A clock stopped at `time`.
    pub fn at(time: UnixTime) -> Self {
        Self::new(time.as_secs())
    }

    /// Sets the time to `secs` seconds since the Unix epoch.
    pub fn set(&self, secs: u64) {
        self.0.store(secs, Ordering::Relaxed);
    }

    /// Moves the time forward by `by` (whole seconds; saturating).
    pub fn advance(&self, by: Duration) {
        let secs = by.as_secs();
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_add(secs))
            });
    }

    /// The current setting in seconds since the Unix epoch.
    pub fn secs(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Clock for FixedClock {
    fn now(&self) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(self.secs()))
    }
}

/// A rustls [`TimeProvider`] backed by a [`Clock`], so TLS configurations built here read no
/// clock of their own either (rustls' default would call `SystemTime::now()`).
#[derive(Debug, Clone)]
pub struct ClockTimeProvider(pub Arc<dyn Clock>);

impl TimeProvider for ClockTimeProvider {
    fn current_time(&self) -> Option<UnixTime> {
        Some(self.0.now())
    }
}

/// Formats seconds since the epoch as an RFC 3339 UTC date for error messages.
pub(crate) fn format_utc(secs: u64) -> String {
    match i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
    {
        Some(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        None => format!("{secs} s after the epoch"),
    }
}

/// Converts seconds since the epoch to the `time` type rcgen wants.
pub(crate) fn to_offset_date_time(secs: i64) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    #[test]
    fn fixed_clock_set_and_advance() {
        let clock = FixedClock::new(1_000);
        assert_eq!(clock.now().as_secs(), 1_000);
        clock.advance(Duration::from_secs(86_400));
        assert_eq!(clock.now().as_secs(), 87_400);
        clock.set(5);
        assert_eq!(clock.secs(), 5);
        let provider = ClockTimeProvider(Arc::new(FixedClock::new(42)));
        assert_eq!(provider.current_time().map(|t| t.as_secs()), Some(42));
    }

    #[cfg_attr(target_arch = "wasm32", wasm_bindgen_test::wasm_bindgen_test)]
    #[test]
    fn formats_utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
