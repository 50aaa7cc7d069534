//! Pass/fail lines for end-to-end checks and the closing `N passed, N failed` line.

use std::time::Instant;

use anyhow::{bail, Result};

/// Collects check results.
#[derive(Debug, Default)]
pub struct Report {
    passed: usize,
    failed: usize,
    skipped: usize,
    /// Run only checks whose name contains this (and those that must always run).
    filter: Option<String>,
}

impl Report {
    /// A report that runs only checks whose names contain `filter` (if given), plus the DHCP
    /// check that the others depend on.
    pub fn filtered(filter: Option<String>) -> Self {
        Self {
            filter,
            ..Self::default()
        }
    }

    /// Runs one check and prints `PASS name (detail)` or `FAIL name: error`.
    pub fn check(&mut self, name: &str, f: impl FnOnce() -> Result<String>) -> bool {
        if let Some(filter) = &self.filter {
            if !name.contains(filter.as_str()) && !name.starts_with("dhcp") {
                self.skipped += 1;
                return true;
            }
        }
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

    /// Does not run a check, for a reason outside this project (a peer's known defect):
    /// prints `SKIP name: why` and counts it as skipped.
    pub fn skip(&mut self, name: &str, why: &str) {
        self.skipped += 1;
        println!("SKIP {name}: {why}");
    }

    /// Prints the summary line and fails if any check failed.
    pub fn finish(self, suite: &str) -> Result<()> {
        if self.skipped > 0 {
            println!(
                "{suite}: {} passed, {} failed, {} skipped",
                self.passed, self.failed, self.skipped
            );
        } else {
            println!("{suite}: {} passed, {} failed", self.passed, self.failed);
        }
        if self.failed > 0 {
            bail!("{} {suite} check(s) failed", self.failed);
        }
        Ok(())
    }
}
