//! `--stats-file PATH`: the runner's counters and memory as a JSON snapshot that tests and
//! monitoring read from outside the process: the same [`Stats`] document as the browser's
//! `NetProxy.stats()`, with the process's identity and memory beside it. The file is replaced atomically (written beside
//! it, then renamed) every [`INTERVAL`] and once more on exit, so a reader never sees half a
//! snapshot.

use std::cell::Cell;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::compose::System;
use crate::stats::{Extra, Stats};

/// How often the snapshot is rewritten.
pub const INTERVAL: Duration = Duration::from_millis(500);

/// Writes snapshots of one system (stack, proxy, relay) to one path.
pub struct StatsFile {
    path: PathBuf,
    tmp: PathBuf,
    system: System,
    started: Instant,
    /// Snapshots written so far (the reader's counter to tell a fresh file from a stale one).
    seq: Cell<u64>,
    /// Whether the last write failed (so a broken path is logged once, not twice a second).
    failing: Cell<bool>,
    /// Whether `--pcap` is capturing.
    capturing: bool,
}

/// One snapshot as written.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Snapshots written so far, this one included (tells a fresh file from a stale one).
    pub seq: u64,
    /// Whether this is the one written on exit.
    pub last: bool,
    /// The runner's process id.
    pub pid: u32,
    /// Milliseconds since the runner started.
    pub uptime_ms: u64,
    /// The wall clock, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// `VmRSS`: resident memory now.
    pub rss_bytes: u64,
    /// `VmHWM`: the highest resident memory so far.
    pub rss_peak_bytes: u64,
    /// The counters, as `NetProxy.stats()` reports them.
    #[serde(flatten)]
    pub stats: Stats,
}

impl StatsFile {
    /// A writer for `path`; nothing is written until [`StatsFile::write`] or
    /// [`StatsFile::run`].
    pub fn new(path: PathBuf, system: System, capturing: bool) -> Self {
        let mut tmp = path.clone().into_os_string();
        tmp.push(format!(".tmp{}", std::process::id()));
        Self {
            path,
            tmp: PathBuf::from(tmp),
            system,
            started: Instant::now(),
            seq: Cell::new(0),
            failing: Cell::new(false),
            capturing,
        }
    }

    /// The next snapshot. `last` marks the one written on exit.
    pub fn snapshot(&self, last: bool) -> Snapshot {
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        let memory = Memory::read();
        Snapshot {
            seq,
            last,
            pid: std::process::id(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            rss_bytes: memory.rss_bytes,
            rss_peak_bytes: memory.rss_peak_bytes,
            stats: Stats::gather(
                &self.system,
                Extra {
                    capturing: self.capturing,
                    closed: last,
                    ..Extra::default()
                },
            ),
        }
    }

    /// Writes one snapshot now (temporary file, then rename over `path`).
    pub fn write(&self, last: bool) -> io::Result<()> {
        let mut text = serde_json::to_string(&self.snapshot(last)).map_err(io::Error::other)?;
        text.push('\n');
        std::fs::write(&self.tmp, text)?;
        std::fs::rename(&self.tmp, &self.path)
    }

    /// Writes a snapshot, logging a failure once per failing streak.
    pub fn write_logged(&self, last: bool) {
        match self.write(last) {
            Ok(()) => self.failing.set(false),
            Err(err) => {
                if !self.failing.replace(true) {
                    tracing::warn!(path = %self.path.display(), error = %err, "cannot write the stats file");
                }
            }
        }
    }

    /// Rewrites the snapshot every [`INTERVAL`], forever (spawn it on the `LocalSet`).
    pub async fn run(self: Rc<Self>) {
        let mut ticks = tokio::time::interval(INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.write_logged(false);
        }
    }
}

/// Starts the periodic writer for `path` on the current `LocalSet`; the returned handle
/// writes the final snapshot (call [`StatsFile::write_logged`] with `true` on exit).
pub fn spawn(path: &Path, system: &System, capturing: bool) -> Rc<StatsFile> {
    let file = Rc::new(StatsFile::new(
        path.to_path_buf(),
        system.clone(),
        capturing,
    ));
    tokio::task::spawn_local(file.clone().run());
    file
}

/// The process's resident memory, from `/proc/self/status` (0 where unreadable).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Memory {
    /// `VmRSS`: resident now.
    rss_bytes: u64,
    /// `VmHWM`: the highest resident size so far.
    rss_peak_bytes: u64,
}

impl Memory {
    fn read() -> Self {
        std::fs::read_to_string("/proc/self/status")
            .map(|text| Self::parse(&text))
            .unwrap_or_default()
    }

    /// Parses the `VmRSS:` and `VmHWM:` lines (values in kB).
    fn parse(status: &str) -> Self {
        let kb = |key: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
                .map(|kb| kb.saturating_mul(1024))
                .unwrap_or(0)
        };
        Self {
            rss_bytes: kb("VmRSS:"),
            rss_peak_bytes: kb("VmHWM:"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let status =
            "Name:\tc2w-net-proxy\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t1\n";
        assert_eq!(
            Memory::parse(status),
            Memory {
                rss_bytes: 10240 * 1024,
                rss_peak_bytes: 20480 * 1024
            }
        );
        assert_eq!(
            Memory::parse("garbage\nVmRSS: lots kB\n"),
            Memory::default()
        );
    }

    #[test]
    fn own_process_has_memory() {
        let memory = Memory::read();
        assert!(memory.rss_bytes > 0);
        assert!(memory.rss_peak_bytes >= memory.rss_bytes);
    }

    #[test]
    fn writes_atomically_with_counters() {
        let dir = std::env::temp_dir().join(format!("c2w-stats-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stats.json");
        let stack = net_stack::Stack::new(net_stack::Config::default()).unwrap();
        let transport = fetch_transport::ScriptedTransport::new();
        let proxy = Rc::new(http_proxy::Proxy::new(
            http_proxy::ProxyConfig::default(),
            Rc::new(transport),
            Rc::new(NoTimer),
        ));
        let system = System {
            stack,
            proxy,
            ca_pem: String::new(),
            proxy_ip: std::net::Ipv4Addr::new(192, 168, 127, 253),
            relay: None,
        };
        let file = StatsFile::new(path.clone(), system, false);
        file.write(false).unwrap();
        file.write(true).unwrap();
        let value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(value["seq"], 2);
        assert_eq!(value["last"], true);
        assert_eq!(value["closed"], true);
        assert_eq!(value["tcp"]["open"], 0);
        assert_eq!(value["proxy"]["connectionsOpen"], 0);
        assert_eq!(value["dhcp"]["leases"], serde_json::json!([]));
        assert!(value["rssBytes"].as_u64().unwrap() > 0);
        // The temporary file was renamed away.
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    struct NoTimer;

    impl http_proxy::Timer for NoTimer {
        fn sleep(&self, _: Duration) -> futures::future::LocalBoxFuture<'static, ()> {
            Box::pin(std::future::pending())
        }
    }
}
