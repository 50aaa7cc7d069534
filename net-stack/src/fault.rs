//! A seeded, deterministic fault injector for Ethernet frames: loss, duplication, reordering
//! and delay, for testing what runs on both sides of a link under a bad network.
//!
//! Sans-IO like the rest of the crate: frames go in with [`FaultInjector::push`] and come out
//! with [`FaultInjector::pop`], the caller passes the time, and [`FaultInjector::next_release`]
//! says when to call `pop` again. The same [`FaultSpec`] (seed included) and the same inputs at
//! the same times always give the same outputs, so a failure seen once can be replayed.
//!
//! ```
//! use net_stack::fault::{FaultInjector, FaultSpec};
//! use net_stack::Instant;
//!
//! let spec: FaultSpec = "loss=5%,dup=1%,delay=10ms,seed=7".parse().unwrap();
//! let mut faults = FaultInjector::new(spec);
//! faults.push(vec![1, 2, 3], Instant::from_millis(0));
//! assert_eq!(faults.pop(Instant::from_millis(5)), None); // still on the wire
//! // Either it arrives at 10 ms (possibly twice), or it was lost.
//! let due = faults.next_release();
//! assert!(due.is_none() || due == Some(Instant::from_millis(10)));
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

use crate::{Duration, Instant};

/// Frames queued (delayed or held back) at most, unless the spec says `queue=N`.
pub const DEFAULT_QUEUE_FRAMES: usize = 1024;
/// Bytes queued at most, whatever the frame count: bounds memory for large frames.
pub const MAX_QUEUE_BYTES: usize = 8 << 20;
/// How long a frame chosen for reordering waits for later frames to overtake it before it is
/// let go anyway (after its normal release time).
pub const REORDER_HOLD: Duration = Duration::from_millis(10);
/// A reordered frame is released after this many later frames at most (at least one).
pub const REORDER_MAX_DEPTH: u32 = 3;

/// A probability in parts per million (0 ..= 1,000,000), written as a percentage (`5%`,
/// `0.25%`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(u32);

impl Rate {
    /// Never.
    pub const ZERO: Rate = Rate(0);
    const MILLION: u32 = 1_000_000;

    /// A rate from parts per million; `None` above 1,000,000.
    pub const fn from_ppm(ppm: u32) -> Option<Self> {
        if ppm <= Self::MILLION {
            Some(Self(ppm))
        } else {
            None
        }
    }

    /// The rate in parts per million.
    pub const fn ppm(self) -> u32 {
        self.0
    }

    /// True for a rate of zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Parses `N%` or `N.NNNN%` (at most four decimals, at most 100%).
    fn parse(text: &str) -> Option<Self> {
        let number = text.strip_suffix('%')?;
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() || frac.len() > 4 || !all_digits(whole) || !all_digits(frac) {
            return None;
        }
        let whole: u32 = whole.parse().ok()?;
        let mut frac_ppm = 0u32;
        for (i, digit) in frac.bytes().enumerate() {
            frac_ppm += u32::from(digit - b'0') * 10u32.pow(3 - i as u32);
        }
        Self::from_ppm(whole.checked_mul(10_000)?.checked_add(frac_ppm)?)
    }
}

fn all_digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / 10_000;
        let frac = self.0 % 10_000;
        if frac == 0 {
            write!(f, "{whole}%")
        } else {
            let digits = format!("{frac:04}");
            write!(f, "{whole}.{}%", digits.trim_end_matches('0'))
        }
    }
}

/// What faults to inject, parsed from `loss=5%,reorder=1%,dup=1%,delay=100ms,jitter=5ms,
/// queue=1024,seed=N` (every key optional, any order; an empty string means no faults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultSpec {
    /// Share of frames dropped.
    pub loss: Rate,
    /// Share of frames held back until later frames have overtaken them.
    pub reorder: Rate,
    /// Share of frames delivered twice.
    pub dup: Rate,
    /// Fixed one-way delay added to every frame.
    pub delay: Duration,
    /// Extra delay, uniform in `0..=jitter`, per frame. It never reorders by itself: a frame
    /// never leaves before the one pushed before it (only `reorder` reorders).
    pub jitter: Duration,
    /// Frames queued at most; more are dropped and counted (also bounded by
    /// [`MAX_QUEUE_BYTES`]).
    pub queue: usize,
    /// Seed of the pseudo-random choices.
    pub seed: u64,
}

impl Default for FaultSpec {
    fn default() -> Self {
        Self {
            loss: Rate::ZERO,
            reorder: Rate::ZERO,
            dup: Rate::ZERO,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            queue: DEFAULT_QUEUE_FRAMES,
            seed: 0,
        }
    }
}

impl FaultSpec {
    /// The same faults with a seed derived from this one and `stream`, for a second,
    /// independent injector (e.g. the other direction of a link).
    pub fn with_stream(&self, stream: u64) -> Self {
        let mut mix = SplitMix64(self.seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        Self {
            seed: mix.next_u64(),
            ..*self
        }
    }

    /// True when no fault is configured (frames pass through unchanged and at once).
    pub fn is_noop(&self) -> bool {
        self.loss.is_zero()
            && self.reorder.is_zero()
            && self.dup.is_zero()
            && self.delay == Duration::ZERO
            && self.jitter == Duration::ZERO
    }
}

/// Why a fault specification was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultSpecError {
    /// A key this parser does not know.
    #[error("unknown fault key `{0}` (known: loss, reorder, dup, delay, jitter, queue, seed)")]
    UnknownKey(String),
    /// An item without `=value`.
    #[error("fault `{0}` needs a value (`{0}=...`)")]
    MissingValue(String),
    /// The same key twice.
    #[error("fault key `{0}` given twice")]
    Duplicate(String),
    /// A value that does not fit its key.
    #[error("bad value `{value}` for `{key}`: expected {expected}")]
    BadValue {
        /// The key.
        key: String,
        /// The value as written.
        value: String,
        /// What the key takes.
        expected: &'static str,
    },
}

const RATE_HELP: &str = "a percentage from 0% to 100% (e.g. 5% or 0.5%)";
const DURATION_HELP: &str = "a duration such as 100ms, 2s or 500us (at most 60s)";

/// Parses `100ms`, `2s`, `500us` or `0`.
fn parse_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let (number, micros_per_unit) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1_000)
    } else if let Some(n) = text.strip_suffix("us") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000_000)
    } else {
        return None;
    };
    if number.is_empty() || !all_digits(number) {
        return None;
    }
    let micros = number.parse::<u64>().ok()?.checked_mul(micros_per_unit)?;
    (micros <= 60_000_000).then(|| Duration::from_micros(micros))
}

impl FromStr for FaultSpec {
    type Err = FaultSpecError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut spec = FaultSpec::default();
        let mut seen: Vec<&str> = Vec::new();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let Some((key, value)) = item.split_once('=') else {
                return Err(FaultSpecError::MissingValue(item.to_string()));
            };
            let (key, value) = (key.trim(), value.trim());
            let bad = |expected| FaultSpecError::BadValue {
                key: key.to_string(),
                value: value.to_string(),
                expected,
            };
            match key {
                "loss" => spec.loss = Rate::parse(value).ok_or_else(|| bad(RATE_HELP))?,
                "reorder" => spec.reorder = Rate::parse(value).ok_or_else(|| bad(RATE_HELP))?,
                "dup" => spec.dup = Rate::parse(value).ok_or_else(|| bad(RATE_HELP))?,
                "delay" => spec.delay = parse_duration(value).ok_or_else(|| bad(DURATION_HELP))?,
                "jitter" => {
                    spec.jitter = parse_duration(value).ok_or_else(|| bad(DURATION_HELP))?
                }
                "queue" => {
                    spec.queue = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=1 << 20).contains(n))
                        .ok_or_else(|| bad("a frame count from 1 to 1048576"))?
                }
                "seed" => {
                    spec.seed = value
                        .parse::<u64>()
                        .map_err(|_| bad("an unsigned 64-bit integer"))?
                }
                other => return Err(FaultSpecError::UnknownKey(other.to_string())),
            }
            if seen.contains(&key) {
                return Err(FaultSpecError::Duplicate(key.to_string()));
            }
            seen.push(key);
        }
        Ok(spec)
    }
}

impl fmt::Display for FaultSpec {
    /// The canonical form, which parses back to the same spec.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loss={},reorder={},dup={},delay={}us,jitter={}us,queue={},seed={}",
            self.loss,
            self.reorder,
            self.dup,
            self.delay.total_micros(),
            self.jitter.total_micros(),
            self.queue,
            self.seed
        )
    }
}

/// What an injector did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Frames handed out by `pop` (duplicates included).
    pub passed: u64,
    /// Frames dropped by the `loss` rate.
    pub lost: u64,
    /// Frames handed out after at least one frame pushed later.
    pub reordered: u64,
    /// Extra copies made by the `dup` rate.
    pub duplicated: u64,
    /// Frames queued with a non-zero delay.
    pub delayed: u64,
    /// Frames dropped because the queue was full.
    pub dropped_queue_full: u64,
}

/// Counter by counter: the sum over several injectors (or links).
impl std::ops::Add for FaultStats {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            passed: self.passed + other.passed,
            lost: self.lost + other.lost,
            reordered: self.reordered + other.reordered,
            duplicated: self.duplicated + other.duplicated,
            delayed: self.delayed + other.delayed,
            dropped_queue_full: self.dropped_queue_full + other.dropped_queue_full,
        }
    }
}

/// splitmix64: tiny, fast and well distributed, enough for choosing faults (not for secrets).
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `rate`.
    fn chance(&mut self, rate: Rate) -> bool {
        // Draws even for a zero rate so enabling one fault does not shift another's choices.
        let roll = (self.next_u64() % u64::from(Rate::MILLION)) as u32;
        roll < rate.ppm()
    }

    /// Uniform in `0..=max`.
    fn below_or_eq(&mut self, max: u64) -> u64 {
        if max == 0 {
            0
        } else {
            self.next_u64() % (max + 1)
        }
    }
}

/// A frame waiting for its release time.
#[derive(Debug)]
struct Queued {
    frame: Vec<u8>,
    at: Instant,
}

/// A frame held back for reordering.
#[derive(Debug)]
struct Held {
    frame: Vec<u8>,
    /// Its normal release time.
    ready: Instant,
    /// Released at this time even if fewer than `after` frames overtook it.
    deadline: Instant,
    /// Later frames still to overtake it before it goes.
    after: u32,
    /// Later frames that did overtake it.
    overtaken: u32,
}

/// Applies a [`FaultSpec`] to a stream of frames: loss, duplication, reordering and delay,
/// with a bounded queue. Time is whatever the caller passes (it must not go backwards).
#[derive(Debug)]
pub struct FaultInjector {
    spec: FaultSpec,
    rng: SplitMix64,
    /// In release order (release times never decrease).
    queue: VecDeque<Queued>,
    held: VecDeque<Held>,
    queued_bytes: usize,
    /// Release time of the last frame queued, so jitter never reorders.
    last_release: Instant,
    stats: FaultStats,
}

impl FaultInjector {
    /// An injector applying `spec`.
    pub fn new(spec: FaultSpec) -> Self {
        Self {
            spec,
            rng: SplitMix64(spec.seed),
            queue: VecDeque::new(),
            held: VecDeque::new(),
            queued_bytes: 0,
            last_release: Instant::ZERO,
            stats: FaultStats::default(),
        }
    }

    /// The spec it applies.
    pub fn spec(&self) -> &FaultSpec {
        &self.spec
    }

    /// What it did so far.
    pub fn stats(&self) -> FaultStats {
        self.stats
    }

    /// Frames waiting inside (delayed or held back).
    pub fn len(&self) -> usize {
        self.queue.len() + self.held.len()
    }

    /// True when no frame is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes a frame that arrived at `now`. It may be dropped, duplicated, delayed or held
    /// back; what comes out comes out of [`pop`](Self::pop).
    pub fn push(&mut self, frame: Vec<u8>, now: Instant) {
        // Every frame draws the same number of values whatever the outcome, so the choices
        // for frame N depend only on the seed and N.
        let lost = self.rng.chance(self.spec.loss);
        let dup = self.rng.chance(self.spec.dup);
        let reorder = self.rng.chance(self.spec.reorder);
        let depth = 1 + (self.rng.next_u64() % u64::from(REORDER_MAX_DEPTH)) as u32;
        let jitter = self.rng.below_or_eq(self.spec.jitter.total_micros());
        if lost {
            self.stats.lost += 1;
            return;
        }
        let mut at = now + self.spec.delay + Duration::from_micros(jitter);
        if at < self.last_release {
            at = self.last_release;
        }
        if dup && self.admit(frame.len()) {
            self.stats.duplicated += 1;
            self.enqueue(frame.clone(), at, now);
        }
        if !self.admit(frame.len()) {
            return;
        }
        if reorder {
            self.mark_delayed(at, now);
            self.queued_bytes += frame.len();
            self.held.push_back(Held {
                frame,
                ready: at,
                deadline: at + REORDER_HOLD,
                after: depth,
                overtaken: 0,
            });
        } else {
            self.enqueue(frame, at, now);
        }
    }

    /// True if a frame of `len` bytes fits; counts the drop otherwise.
    fn admit(&mut self, len: usize) -> bool {
        if self.len() >= self.spec.queue || self.queued_bytes + len > MAX_QUEUE_BYTES {
            self.stats.dropped_queue_full += 1;
            false
        } else {
            true
        }
    }

    fn mark_delayed(&mut self, at: Instant, now: Instant) {
        if at > now {
            self.stats.delayed += 1;
        }
    }

    fn enqueue(&mut self, frame: Vec<u8>, at: Instant, now: Instant) {
        self.mark_delayed(at, now);
        self.last_release = at;
        self.queued_bytes += frame.len();
        self.queue.push_back(Queued { frame, at });
    }

    /// The next frame due at `now`, if any. Call it until it returns `None`.
    pub fn pop(&mut self, now: Instant) -> Option<Vec<u8>> {
        // A held frame goes first once enough later frames overtook it, or at its deadline.
        if let Some(i) = self
            .held
            .iter()
            .position(|h| (h.after == 0 && h.ready <= now) || h.deadline <= now)
        {
            let held = self.held.remove(i)?;
            if held.overtaken > 0 {
                self.stats.reordered += 1;
            }
            return Some(self.release(held.frame));
        }
        if self.queue.front().is_some_and(|q| q.at <= now) {
            let queued = self.queue.pop_front()?;
            for held in &mut self.held {
                if held.after > 0 {
                    held.after -= 1;
                    held.overtaken += 1;
                }
            }
            return Some(self.release(queued.frame));
        }
        None
    }

    fn release(&mut self, frame: Vec<u8>) -> Vec<u8> {
        self.queued_bytes -= frame.len();
        self.stats.passed += 1;
        frame
    }

    /// When the next frame is due (it may already be), or `None` when nothing waits.
    pub fn next_release(&self) -> Option<Instant> {
        let held = self
            .held
            .iter()
            .map(|h| if h.after == 0 { h.ready } else { h.deadline });
        let queued = self.queue.front().map(|q| q.at);
        held.chain(queued).min()
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    fn spec(text: &str) -> FaultSpec {
        text.parse().unwrap()
    }

    fn ms(n: u64) -> Instant {
        Instant::from_millis(n as i64)
    }

    /// Frame `i` as 4 bytes, so order and identity can be checked.
    fn frame(i: u32) -> Vec<u8> {
        i.to_be_bytes().to_vec()
    }

    fn id(frame: &[u8]) -> u32 {
        u32::from_be_bytes(frame.try_into().unwrap())
    }

    /// Pushes `n` frames one per millisecond and drains everything (running time forward past
    /// every release); returns the ids in output order.
    fn run(spec: FaultSpec, n: u32) -> (Vec<u32>, FaultStats) {
        let mut f = FaultInjector::new(spec);
        let mut out = Vec::new();
        for i in 0..n {
            let now = ms(u64::from(i));
            f.push(frame(i), now);
            while let Some(fr) = f.pop(now) {
                out.push(id(&fr));
            }
        }
        while let Some(at) = f.next_release() {
            while let Some(fr) = f.pop(at) {
                out.push(id(&fr));
            }
        }
        assert!(f.is_empty());
        (out, f.stats())
    }

    #[test]
    fn parses_every_key_in_any_order() {
        let s = spec("seed=42, loss=5%,reorder=1%,dup=0.25%,delay=100ms,jitter=500us,queue=64");
        assert_eq!(s.loss.ppm(), 50_000);
        assert_eq!(s.reorder.ppm(), 10_000);
        assert_eq!(s.dup.ppm(), 2_500);
        assert_eq!(s.delay, Duration::from_millis(100));
        assert_eq!(s.jitter, Duration::from_micros(500));
        assert_eq!(s.queue, 64);
        assert_eq!(s.seed, 42);
        assert_eq!(spec("delay=2s").delay, Duration::from_secs(2));
        assert_eq!(spec("loss=100%").loss.ppm(), 1_000_000);
        assert_eq!(spec(""), FaultSpec::default());
        assert!(spec("").is_noop());
        assert!(!spec("dup=1%").is_noop());
    }

    #[test]
    fn display_round_trips() {
        let s = spec("loss=5.5%,reorder=0.0001%,dup=1%,delay=3ms,jitter=7us,queue=9,seed=3");
        assert_eq!(s.to_string().parse::<FaultSpec>().unwrap(), s);
        assert!(s.to_string().contains("loss=5.5%"));
    }

    #[test]
    fn errors_name_the_bad_key_and_value() {
        let err = |t: &str| t.parse::<FaultSpec>().unwrap_err();
        assert_eq!(err("lose=5%"), FaultSpecError::UnknownKey("lose".into()));
        assert_eq!(err("loss"), FaultSpecError::MissingValue("loss".into()));
        assert_eq!(
            err("dup=1%,dup=2%"),
            FaultSpecError::Duplicate("dup".into())
        );
        for bad in [
            "loss=5",
            "loss=101%",
            "loss=-1%",
            "loss=1.23456%",
            "loss=%",
            "loss=.5%",
            "reorder=x%",
            "delay=100",
            "delay=ms",
            "delay=61s",
            "delay=-5ms",
            "jitter=1.5ms",
            "queue=0",
            "seed=-1",
            "seed=99999999999999999999",
        ] {
            let key = bad.split('=').next().unwrap();
            match err(bad) {
                FaultSpecError::BadValue { key: k, value, .. } => {
                    assert_eq!(k, key, "{bad}");
                    assert_eq!(value, &bad[key.len() + 1..], "{bad}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        let message = err("delay=soon").to_string();
        assert!(
            message.contains("delay") && message.contains("soon"),
            "{message}"
        );
    }

    #[test]
    fn no_faults_pass_everything_in_order_at_once() {
        let mut f = FaultInjector::new(FaultSpec::default());
        for i in 0..100 {
            f.push(frame(i), ms(5));
            assert_eq!(f.pop(ms(5)).map(|fr| id(&fr)), Some(i));
            assert_eq!(f.pop(ms(5)), None);
        }
        assert_eq!(f.next_release(), None);
        let s = f.stats();
        assert_eq!((s.passed, s.lost, s.delayed), (100, 0, 0));
    }

    #[test]
    fn loss_rate_is_close_to_the_spec() {
        let n = 100_000;
        let (out, stats) = run(spec("loss=5%,seed=1"), n);
        assert_eq!(stats.lost + stats.passed, u64::from(n));
        assert_eq!(out.len() as u64, stats.passed);
        // 5% of 100,000 is 5,000; the standard deviation is about 69.
        assert!((4_700..=5_300).contains(&stats.lost), "{stats:?}");
        // What survives keeps its order.
        assert!(out.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn same_seed_same_output_other_seed_other_output() {
        let text = "loss=3%,dup=2%,reorder=2%,delay=2ms,jitter=3ms";
        let a = run(spec(&format!("{text},seed=9")), 5_000);
        let b = run(spec(&format!("{text},seed=9")), 5_000);
        let c = run(spec(&format!("{text},seed=10")), 5_000);
        assert_eq!(a, b);
        assert_ne!(a.0, c.0);
        let s = spec("loss=1%,seed=5");
        assert_ne!(s.with_stream(1).seed, s.with_stream(2).seed);
        assert_eq!(s.with_stream(1), s.with_stream(1));
        assert_eq!(s.with_stream(1).loss, s.loss);
    }

    #[test]
    fn duplicates_appear_next_to_their_original() {
        let n = 20_000;
        let (out, stats) = run(spec("dup=1%,seed=3"), n);
        assert!((150..=250).contains(&stats.duplicated), "{stats:?}");
        assert_eq!(out.len() as u64, u64::from(n) + stats.duplicated);
        let pairs = out.windows(2).filter(|w| w[0] == w[1]).count() as u64;
        assert_eq!(pairs, stats.duplicated);
        assert!(out.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn reorder_moves_frames_behind_later_ones_and_loses_none() {
        let n = 20_000;
        let (out, stats) = run(spec("reorder=1%,seed=4"), n);
        assert_eq!(out.len() as u32, n);
        let mut sorted = out.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>());
        let inversions = out.windows(2).filter(|w| w[0] > w[1]).count() as u64;
        assert!(inversions > 100, "only {inversions} inversions");
        assert!((150..=250).contains(&stats.reordered), "{stats:?}");
        // Frames move only a little: a held frame is passed by at most its depth of normal
        // frames, plus the rare frame held back meanwhile and released first.
        for (pos, &i) in out.iter().enumerate() {
            let shift = pos as i64 - i64::from(i);
            assert!(
                shift <= 2 * i64::from(REORDER_MAX_DEPTH),
                "frame {i} at {pos}"
            );
        }
    }

    #[test]
    fn a_held_frame_without_followers_leaves_at_its_deadline() {
        let mut f = FaultInjector::new(spec("reorder=100%"));
        f.push(frame(1), ms(0));
        assert_eq!(f.pop(ms(0)), None);
        assert_eq!(f.next_release(), Some(ms(0) + REORDER_HOLD));
        assert_eq!(f.pop(ms(9)), None);
        assert_eq!(f.pop(ms(10)).map(|fr| id(&fr)), Some(1));
        // Nothing overtook it, so it does not count as reordered.
        assert_eq!(f.stats().reordered, 0);
        assert_eq!(f.next_release(), None);
    }

    #[test]
    fn delay_holds_frames_until_arrival_plus_delay() {
        let mut f = FaultInjector::new(spec("delay=100ms"));
        f.push(frame(1), ms(0));
        f.push(frame(2), ms(30));
        assert_eq!(f.next_release(), Some(ms(100)));
        assert_eq!(f.pop(ms(99)), None);
        assert_eq!(f.pop(ms(100)).map(|fr| id(&fr)), Some(1));
        assert_eq!(f.pop(ms(100)), None);
        assert_eq!(f.next_release(), Some(ms(130)));
        assert_eq!(f.pop(ms(129)), None);
        assert_eq!(f.pop(ms(200)).map(|fr| id(&fr)), Some(2));
        assert_eq!(f.stats().delayed, 2);
        assert_eq!(f.stats().passed, 2);
    }

    #[test]
    fn jitter_adds_bounded_delay_and_keeps_order() {
        let (out, _) = run(spec("delay=5ms,jitter=20ms,seed=8"), 2_000);
        assert_eq!(out, (0..2_000).collect::<Vec<_>>());
        let mut f = FaultInjector::new(spec("delay=5ms,jitter=20ms,seed=8"));
        for i in 0..200 {
            f.push(frame(i), ms(0));
        }
        let last = ms(0) + Duration::from_millis(25);
        assert!(f.next_release().unwrap() >= ms(5));
        let mut got = 0;
        while f.pop(last).is_some() {
            got += 1;
        }
        assert_eq!(got, 200);
    }

    #[test]
    fn the_queue_is_bounded_and_drops_are_counted() {
        let mut f = FaultInjector::new(spec("delay=10ms,queue=8"));
        for i in 0..20 {
            f.push(frame(i), ms(0));
        }
        assert_eq!(f.len(), 8);
        assert_eq!(f.stats().dropped_queue_full, 12);
        let mut out = Vec::new();
        while let Some(fr) = f.pop(ms(10)) {
            out.push(id(&fr));
        }
        assert_eq!(out, (0..8).collect::<Vec<_>>());
        // Bytes are bounded too, whatever the frame count.
        let mut f = FaultInjector::new(spec("delay=10ms"));
        let big = vec![0u8; 65_536];
        for _ in 0..200 {
            f.push(big.clone(), ms(0));
        }
        assert_eq!(f.len(), MAX_QUEUE_BYTES / big.len());
        assert_eq!(f.stats().dropped_queue_full, 200 - f.len() as u64);
    }
}
