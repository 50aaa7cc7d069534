//! The fault phase of `cargo xtask e2e` (alone: `cargo xtask e2e faults [PROFILE]`): the
//! native runner started with `--fault`, so every frame in both directions crosses its seeded
//! fault layer, and a real Linux guest downloads and uploads over http and https, checked
//! byte-exact with sha256.
//!
//! One runner and guest per profile (5% loss; 1% reordering with 1% duplication; 100 ms of
//! delay each way): each profile's counters then belong to it alone, and a profile that breaks
//! the link cannot spoil the next. After the transfers the runner is stopped and the fault
//! counters it logs at exit must show that the faults really happened.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::harness::cleanup;
use crate::harness::guest::{build_runner, Guest, GuestNs, Runner};
use crate::harness::origins::{Cors, Origin, OriginFiles};
use crate::report::Report;
use crate::tools::{ensure_programs, is_root, workspace_root};

/// One fault profile: a short name (used in check names and filters) and the `--fault` spec.
struct Profile {
    name: &'static str,
    spec: &'static str,
    /// What the runner's counters must show for the profile to count as applied.
    expect: fn(&Counters) -> Result<()>,
}

const PROFILES: &[Profile] = &[
    Profile {
        name: "loss",
        spec: "loss=5%,seed=11",
        expect: |c| {
            let rate = c.lost as f64 / (c.lost + c.passed).max(1) as f64;
            if !(0.035..=0.065).contains(&rate) {
                bail!("lost {:.2}% of the frames, expected about 5%", rate * 100.0);
            }
            Ok(())
        },
    },
    Profile {
        name: "reorder-dup",
        spec: "reorder=1%,dup=1%,seed=12",
        expect: |c| {
            if c.reordered == 0 || c.duplicated == 0 {
                bail!("no frame was reordered or duplicated");
            }
            Ok(())
        },
    },
    Profile {
        name: "delay",
        spec: "delay=100ms,seed=13",
        expect: |c| {
            if c.delayed < c.passed / 2 {
                bail!("only {} of {} frames were delayed", c.delayed, c.passed);
            }
            Ok(())
        },
    },
];

/// Download size per scheme.
const DOWNLOAD: usize = 8 << 20;
/// Upload size per scheme.
const UPLOAD: usize = 4 << 20;

/// Runs the profiles `filter` selects (all without one, or `faults`; `faults loss` only that
/// profile; a longer filter such as `faults loss: curl https` only the checks it names).
pub fn run(filter: Option<&str>) -> Result<()> {
    if !is_root() {
        bail!("e2e faults needs root (TAP devices and network namespaces); run it as root");
    }
    ensure_programs(&[
        ("busybox", "busybox"),
        ("udhcpc", "udhcpc"),
        ("/etc/udhcpc/default.script", "udhcpc"),
        ("curl", "curl"),
        ("ip", "iproute2"),
        ("timeout", "coreutils"),
        ("sha256sum", "coreutils"),
    ])?;
    let selected: Vec<&Profile> = PROFILES
        .iter()
        .filter(|p| {
            let prefix = format!("faults {}", p.name);
            filter.is_none_or(|f| format!("{prefix}:").contains(f) || f.starts_with(&prefix))
        })
        .collect();
    if selected.is_empty() {
        let names: Vec<&str> = PROFILES.iter().map(|p| p.name).collect();
        bail!(
            "no fault profile matches {filter:?} (profiles: {})",
            names.join(", ")
        );
    }
    let binary = build_runner()?;
    let _guard = cleanup::Guard;
    let dir = workspace_root().join("target/e2e-faults");
    std::fs::create_dir_all(&dir)?;
    let files = OriginFiles::create(&dir.join("origin")).context("creating the origin's files")?;
    let http = Origin::http(&files, Cors::Off)?;
    let https = Origin::https(&files, Cors::Off)?;
    let mut r = Report::filtered(filter.map(str::to_string));
    for (i, profile) in selected.into_iter().enumerate() {
        let started = Instant::now();
        let result = run_profile(&mut r, &binary, &dir, &files, [&http, &https], i, profile);
        if let Err(e) = &result {
            // A set-up failure fails the profile as one check and the next still runs.
            r.check(&format!("faults {}: set-up", profile.name), || {
                Err(anyhow::anyhow!("{e:#}"))
            });
        }
        println!(
            "xtask: fault profile {} ({}) took {:.1} s",
            profile.name,
            profile.spec,
            started.elapsed().as_secs_f64()
        );
    }
    r.finish("e2e faults")
}

fn run_profile(
    r: &mut Report,
    binary: &Path,
    dir: &Path,
    files: &OriginFiles,
    origins: [&Origin; 2],
    index: usize,
    profile: &Profile,
) -> Result<()> {
    let id = std::process::id();
    let name = profile.name;
    // Interface names are at most 15 bytes.
    let tap = format!("c2wf{index}{}", id % 1_000_000);
    let proxy_ca = dir.join(format!("proxy-ca-{name}.pem"));
    let _ = std::fs::remove_file(&proxy_ca);
    let mut runner_args = Runner::base_args(&files.ca_cert, &proxy_ca);
    runner_args.extend([
        "--fault".into(),
        profile.spec.into(),
        "--timeout".into(),
        "60".into(),
    ]);
    let log = dir.join(format!("runner-{name}.log"));
    let mut runner = Runner::start_tap(binary, &tap, &runner_args, log.clone())?;
    let work = dir.join(format!("guest-work-{name}"));
    let guest = GuestNs::behind(&format!("c2w-f{index}-{id}"), &tap, &work)?;
    let g = Guest {
        ns: &guest,
        ca: proxy_ca.clone(),
        work: work.clone(),
    };
    let dhcp_ok = r.check(
        &format!("dhcp (faults {name}): udhcpc gets 192.168.127.3 through the fault layer"),
        || g.dhcp(),
    );
    for origin in origins {
        let scheme = origin.scheme();
        let base = origin.base_url();
        r.check(
            &format!(
                "faults {name}: curl {scheme} {} MiB download, sha256",
                DOWNLOAD >> 20
            ),
            || {
                if !dhcp_ok {
                    bail!("no lease");
                }
                let rate = g.download(&base, DOWNLOAD, Duration::from_secs(120))?;
                Ok(format!("sha256 ok, {rate:.2} MB/s"))
            },
        );
        r.check(
            &format!(
                "faults {name}: curl {scheme} {} MiB upload, sha256",
                UPLOAD >> 20
            ),
            || {
                if !dhcp_ok {
                    bail!("no lease");
                }
                g.upload(&base, UPLOAD, false)
            },
        );
    }
    r.check(
        &format!("faults {name}: the runner stays up and its fault counters show {name}"),
        || {
            if !runner.is_running() {
                bail!("the runner exited: {}", runner.log_tail());
            }
            // Stopping it makes it log the counters of both directions.
            drop(runner);
            let text = std::fs::read_to_string(&log)
                .with_context(|| format!("reading {}", log.display()))?;
            let counters = Counters::from_log(&text)?;
            (profile.expect)(&counters)?;
            Ok(counters.to_string())
        },
    );
    drop(guest);
    Ok(())
}

/// The runner's fault counters, both directions summed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counters {
    passed: u64,
    lost: u64,
    reordered: u64,
    duplicated: u64,
    delayed: u64,
    dropped_queue_full: u64,
    /// Log lines the counters came from (one per direction).
    lines: u64,
}

impl Counters {
    /// Sums the `fault counters` lines of a runner log.
    fn from_log(log: &str) -> Result<Self> {
        let mut c = Counters::default();
        for line in log.lines().map(strip_ansi) {
            if !line.contains("fault counters") {
                continue;
            }
            c.lines += 1;
            for word in line.split_whitespace() {
                let Some((key, value)) = word.split_once('=') else {
                    continue;
                };
                let Ok(n) = value.parse::<u64>() else {
                    continue;
                };
                match key {
                    "passed" => c.passed += n,
                    "lost" => c.lost += n,
                    "reordered" => c.reordered += n,
                    "duplicated" => c.duplicated += n,
                    "delayed" => c.delayed += n,
                    "dropped_queue_full" => c.dropped_queue_full += n,
                    _ => {}
                }
            }
        }
        if c.lines != 2 {
            bail!(
                "expected the counters of 2 directions in the runner's log, found {}",
                c.lines
            );
        }
        Ok(c)
    }
}

impl std::fmt::Display for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "both directions: {} passed, {} lost, {} reordered, {} duplicated, {} delayed, {} dropped (queue full)",
            self.passed,
            self.lost,
            self.reordered,
            self.duplicated,
            self.delayed,
            self.dropped_queue_full
        )
    }
}

/// `line` without terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_from_coloured_log_lines() {
        let log = "\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m driver: fault counters \u{1b}[3mdirection\u{1b}[0m=\"guest->stack\" \u{1b}[3mpassed\u{1b}[0m\u{1b}[2m=\u{1b}[0m90 lost=10 reordered=1 duplicated=2 delayed=0 dropped_queue_full=0\n\
                   other line passed=1000\n\
                   x fault counters direction=\"stack->guest\" passed=10 lost=1 reordered=0 duplicated=0 delayed=3 dropped_queue_full=4\n";
        let c = Counters::from_log(log).unwrap();
        assert_eq!(
            (
                c.passed,
                c.lost,
                c.reordered,
                c.duplicated,
                c.delayed,
                c.dropped_queue_full
            ),
            (100, 11, 1, 2, 3, 4)
        );
        assert!(Counters::from_log("nothing").is_err());
    }
}
