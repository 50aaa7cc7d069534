//! The wall clock, read here and nowhere below: mitm-ca needs the date for certificate
//! validity. Natively it is `SystemTime`; in the browser `Date.now()` (`SystemTime::now()`
//! panics on wasm32).

use mitm_ca::{Clock, UnixTime};

/// The real wall clock of the platform.
#[derive(Debug, Default, Clone, Copy)]
pub struct WallClock;

impl Clock for WallClock {
    #[cfg(not(target_arch = "wasm32"))]
    fn now(&self) -> UnixTime {
        UnixTime::now()
    }

    #[cfg(target_arch = "wasm32")]
    fn now(&self) -> UnixTime {
        let millis = js_sys::Date::now();
        UnixTime::since_unix_epoch(std::time::Duration::from_millis(millis as u64))
    }
}
