//! Pass/fail lines for end-to-end checks and the closing `N passed, N failed` line.

use std::time::Instant;

use anyhow::{bail, Result};

/// Collects check results.
#[derive(Debug, Default)]
pub struct Report {
    passed: usize,
    failed: usize,
}

impl Report {
    /// Runs one check and prints `PASS name (detail)` or `FAIL name: error`.
    pub fn check(&mut self, name: &str, f: impl FnOnce() -> Result<String>) -> bool {
        let started = Instant::now();
        let result = f();
        let ms = started.elapsed().as_millis();
        match result {
            Ok(detail) => {
                self.passed += 1;
                println!("PASS {name} ({detail}; {ms} ms)");
                true
            }
            Err(err) => {
                self.failed += 1;
                println!("FAIL {name}: {err:#} ({ms} ms)");
                false
            }
        }
    }

    /// Prints the summary line and fails if any check failed.
    pub fn finish(self, suite: &str) -> Result<()> {
        println!("{suite}: {} passed, {} failed", self.passed, self.failed);
        if self.failed > 0 {
            bail!("{} {suite} check(s) failed", self.failed);
        }
        Ok(())
    }
}
