//! Durations as people write them: `5s`, `500ms`, `2m`, `1h 30m` (humantime's syntax), or a
//! plain number of seconds (`60`, `0.5`) as before. One parser for the command line, the JS
//! config and the worker's query string, so a duration reads the same everywhere.

use std::time::Duration;

/// The range an origin timeout must fall in.
pub const TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(86_400));

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Neither a number of seconds nor a number with a unit.
    #[error("{text:?} is not a duration (write e.g. 60, 5s, 500ms or 2m): {reason}")]
    Syntax {
        /// What was given.
        text: String,
        /// What the parser found wrong.
        reason: String,
    },
    /// A valid duration outside the allowed range.
    #[error("{text:?} is out of range: between {min:?} and {max:?} is allowed")]
    Range {
        /// What was given.
        text: String,
        /// The smallest allowed value.
        min: Duration,
        /// The largest allowed value.
        max: Duration,
    },
}

/// Parses `text`: a plain whole number is seconds, anything else humantime's syntax (`ms`,
/// `s`, `m`, `h`, `d`, also combined: `1m 30s`).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    let syntax = |reason: String| DurationError::Syntax {
        text: text.to_string(),
        reason,
    };
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = trimmed
            .parse()
            .map_err(|e: std::num::ParseIntError| syntax(e.to_string()))?;
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(trimmed).map_err(|e| syntax(e.to_string()))
}

/// Parses `text` with [`parse_duration`] and checks it lies in `range` (inclusive).
pub fn parse_duration_in(
    text: &str,
    (min, max): (Duration, Duration),
) -> Result<Duration, DurationError> {
    let d = parse_duration(text)?;
    if d < min || d > max {
        return Err(DurationError::Range {
            text: text.to_string(),
            min,
            max,
        });
    }
    Ok(d)
}

/// An origin timeout: a duration from 1 ms to 24 h.
pub fn parse_timeout(text: &str) -> Result<Duration, DurationError> {
    parse_duration_in(text, TIMEOUT_RANGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_plain_seconds() {
        let ok = |t: &str, d: Duration| assert_eq!(parse_duration(t), Ok(d), "{t}");
        ok("5s", Duration::from_secs(5));
        ok("500ms", Duration::from_millis(500));
        ok("2m", Duration::from_secs(120));
        ok("1h 30m", Duration::from_secs(5400));
        ok("1m30s", Duration::from_secs(90));
        ok("250us", Duration::from_micros(250));
        ok("60", Duration::from_secs(60));
        ok(" 60 ", Duration::from_secs(60));
        ok("0", Duration::ZERO);
    }

    #[test]
    fn nonsense_is_refused_with_the_text_and_an_example() {
        for bad in [
            "",
            "s",
            "5x",
            "-5s",
            "-5",
            "five",
            "1.2.3",
            "5 s s",
            "nan",
            "inf",
            "0.5",
            "99999999999999999999",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(matches!(err, DurationError::Syntax { .. }), "{bad}: {err}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
            assert!(msg.contains("5s"), "{msg}");
        }
    }

    /// Any text gives a duration or a typed error, never a panic: a deterministic sweep over
    /// strings built from the characters the syntax uses (digits, units, signs, spaces).
    #[test]
    fn any_text_is_answered_without_a_panic() {
        const ALPHABET: &[u8] = b"0123456789 .+-smhdun\xc2\xb5";
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 24) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| ALPHABET[((state >> (i % 8 * 8)) as usize + i) % ALPHABET.len()])
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            match parse_timeout(&text) {
                Ok(d) => assert!(d >= TIMEOUT_RANGE.0 && d <= TIMEOUT_RANGE.1, "{text:?}"),
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
        for huge in [
            "18446744073709551616",
            "99999999999999999999d",
            "1000000000000000000000h",
        ] {
            assert!(parse_duration(huge).is_err(), "{huge}");
        }
    }

    #[test]
    fn timeouts_must_be_positive_and_at_most_a_day() {
        assert_eq!(parse_timeout("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_timeout("1ms"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_timeout("24h"), Ok(Duration::from_secs(86_400)));
        for bad in ["0", "0s", "25h", "100000"] {
            let err = parse_timeout(bad).unwrap_err();
            assert!(matches!(err, DurationError::Range { .. }), "{bad}: {err}");
            assert!(err.to_string().contains("1ms"), "{err}");
            assert!(err.to_string().contains("86400s"), "{err}");
        }
    }
}
