//! [`Faults`]: seeded loss, duplication, reordering and delay between a link and the stack,
//! one injector per direction with independent seeds. For tests and the runner's `--fault`;
//! without the `fault` feature (the shipped `dist/`), `Faults` has no values and the driver's
//! fault paths compile away.

#[cfg(feature = "fault")]
pub use enabled::Faults;

#[cfg(not(feature = "fault"))]
pub use disabled::Faults;

#[cfg(feature = "fault")]
mod enabled {
    use net_stack::fault::{FaultInjector, FaultSpec, FaultStats};
    use net_stack::Instant;

    /// Seed stream of the guest-to-stack injector (see [`FaultSpec::with_stream`]).
    const TO_STACK_STREAM: u64 = 1;
    /// Seed stream of the stack-to-guest injector.
    const TO_GUEST_STREAM: u64 = 2;

    /// The fault injectors of one guest link. Their counters are logged when the link ends,
    /// however it ends (guest gone, error, shutdown).
    pub struct Faults {
        to_stack: FaultInjector,
        to_guest: FaultInjector,
    }

    impl Faults {
        /// Injectors for both directions from one spec.
        pub fn new(spec: &FaultSpec) -> Self {
            Self {
                to_stack: FaultInjector::new(spec.with_stream(TO_STACK_STREAM)),
                to_guest: FaultInjector::new(spec.with_stream(TO_GUEST_STREAM)),
            }
        }

        /// A frame from the guest enters the injector towards the stack.
        pub fn from_guest(&mut self, frame: Vec<u8>, now: Instant) {
            self.to_stack.push(frame, now);
        }

        /// Hands every frame due towards the stack to `deliver`.
        pub fn release_to_stack(&mut self, now: Instant, mut deliver: impl FnMut(Vec<u8>)) {
            while let Some(frame) = self.to_stack.pop(now) {
                deliver(frame);
            }
        }

        /// A frame from the stack enters the injector towards the guest.
        pub fn to_guest(&mut self, frame: Vec<u8>, now: Instant) {
            self.to_guest.push(frame, now);
        }

        /// The next frame due towards the guest.
        pub fn release_to_guest(&mut self, now: Instant) -> Option<Vec<u8>> {
            self.to_guest.pop(now)
        }

        /// The earliest time a delayed or held frame is due in either direction.
        pub fn next_release(&self) -> Option<Instant> {
            match (self.to_stack.next_release(), self.to_guest.next_release()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
    }

    fn log_stats(direction: &str, s: FaultStats) {
        tracing::info!(
            direction,
            passed = s.passed,
            lost = s.lost,
            reordered = s.reordered,
            duplicated = s.duplicated,
            delayed = s.delayed,
            dropped_queue_full = s.dropped_queue_full,
            "fault counters"
        );
    }

    impl Drop for Faults {
        fn drop(&mut self) {
            log_stats("guest->stack", self.to_stack.stats());
            log_stats("stack->guest", self.to_guest.stats());
        }
    }
}

#[cfg(not(feature = "fault"))]
mod disabled {
    use net_stack::Instant;

    /// No faults can be injected in this build: there is no value of this type.
    pub enum Faults {}

    impl Faults {
        /// Never called: there is no value.
        pub fn from_guest(&mut self, _: Vec<u8>, _: Instant) {
            match *self {}
        }

        /// Never called: there is no value.
        pub fn release_to_stack(&mut self, _: Instant, _: impl FnMut(Vec<u8>)) {
            match *self {}
        }

        /// Never called: there is no value.
        pub fn to_guest(&mut self, _: Vec<u8>, _: Instant) {
            match *self {}
        }

        /// Never called: there is no value.
        pub fn release_to_guest(&mut self, _: Instant) -> Option<Vec<u8>> {
            match *self {}
        }

        /// Never called: there is no value.
        pub fn next_release(&self) -> Option<Instant> {
            match *self {}
        }
    }
}
