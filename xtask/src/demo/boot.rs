//! One boot of the demo's guest in headless Chromium: the page is opened with a query (NIC,
//! backend, destinations) and a shell script to type once the guest's shell is ready; the
//! console, stats, side panel and page log it posts back are collected until the script's end
//! mark appears (or the time limit passes) and saved beside each other. `demo --check` and
//! `bench tab` both boot through here.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::harness::browser::launch::{Browser, Kind, LaunchSpec};
use crate::harness::browser::page_server::{Board, PageServer};
use crate::harness::origins::OriginFiles;

/// What one boot produced.
pub struct Boot {
    /// The serial console's text.
    pub console: String,
    /// The last `{stats, timings, pacing}` JSON the page posted.
    pub stats: String,
    /// The page's side panel as text.
    pub panel: String,
    /// Whether the end mark appeared in time (the error says why not).
    pub finished: Result<()>,
    /// From starting the browser to the end mark (or the limit).
    pub elapsed: Duration,
}

/// What a query parameter's value keeps unencoded: RFC 3986's unreserved characters.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes `s` for a query parameter.
pub fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string()
}

/// How long, after the end mark, the page has to post each of the reports a boot waits for.
const REPORT_WAIT: Duration = Duration::from_secs(60);

/// What one boot does in the guest and waits for.
pub struct Run<'a> {
    /// The page's query, without `run=` and `report=`.
    pub query: &'a str,
    /// The shell lines typed into the guest once its shell is ready.
    pub script: &'a str,
    /// The console text that ends the boot.
    pub end: &'a str,
    /// Board keys the page posts that the boot waits for after `end` (up to a minute each;
    /// their values stay on `server.board` until the next boot).
    pub reports: &'a [&'a str],
    /// How long `end` may take to appear.
    pub limit: Duration,
}

/// Boots the demo served by `server` as `run` says and saves console.txt, page-log.txt,
/// panel.txt and stats.json in `dir`.
pub fn boot(server: &PageServer, files: &OriginFiles, dir: &Path, run: &Run) -> Result<Boot> {
    let Run {
        query,
        script,
        end,
        reports,
        limit,
    } = *run;
    std::fs::create_dir_all(dir)?;
    server.board.clear();
    let url = format!("{}/?{query}&report=1&run={}", server.base, encode(script));
    let spec = LaunchSpec {
        dir: &dir.join("chromium"),
        origin_cert: files.server_cert(),
        origin_ca: &files.ca_cert,
    };
    let started = Instant::now();
    let mut browser = Browser::start(Kind::Chromium, &url, &spec)?;
    let board = server.board.clone();
    let waited = wait_console(&board, limit, |t| t.contains(end));
    let elapsed = started.elapsed();
    let (console, finished) = match waited {
        Ok(text) => {
            // One more round of posts after the end mark, so the panel shows the last request.
            let _ = board.wait("console", 0, Duration::from_secs(1));
            std::thread::sleep(Duration::from_millis(1200));
            for key in reports {
                // A report that does not come is the caller's to judge (it reads the board).
                if let Err(err) = board.wait(key, 0, REPORT_WAIT) {
                    eprintln!("xtask: {err:#}");
                }
            }
            (text, Ok(()))
        }
        Err(err) => {
            eprintln!(
                "xtask: chromium {}; its log ends with:\n{}",
                if browser.is_running() {
                    "runs"
                } else {
                    "exited"
                },
                browser.log_tail(30)
            );
            if let Some((_, errors)) = board.get("page-error") {
                eprintln!("xtask: page errors: {errors}");
            }
            let text = board.get("console").map(|(_, t)| t).unwrap_or_default();
            (text, Err(err))
        }
    };
    let stats = board.get("stats").map(|(_, s)| s).unwrap_or_default();
    let panel = board.get("panel").map(|(_, s)| s).unwrap_or_default();
    drop(browser);
    let log = board.get("log").map(|(_, s)| s).unwrap_or_default();
    std::fs::write(dir.join("page-log.txt"), &log)?;
    std::fs::write(dir.join("console.txt"), &console)?;
    std::fs::write(dir.join("panel.txt"), &panel)?;
    std::fs::write(dir.join("stats.json"), &stats)?;
    Ok(Boot {
        console,
        stats,
        panel,
        finished,
        elapsed,
    })
}

/// Waits until the posted console text satisfies `done`; returns the last text.
fn wait_console(board: &Board, limit: Duration, done: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + limit;
    let mut seen = 0;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            let text = board.get("console").map(|(_, t)| t).unwrap_or_default();
            bail!(
                "timed out after {limit:?}; console so far:\n{}",
                tail(&text, 40)
            );
        }
        match board.wait("console", seen, remaining) {
            Ok((n, text)) => {
                seen = n;
                if done(&text) {
                    return Ok(text);
                }
            }
            Err(err) => {
                let text = board.get("console").map(|(_, t)| t).unwrap_or_default();
                bail!("{err:#}; console so far:\n{}", tail(&text, 40));
            }
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The output between the last occurrence of `start` (a line the guest printed) and `end`.
pub fn section<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.rfind(start)? + start.len();
    let to = text[from..].find(end)? + from;
    Some(&text[from..to])
}

/// The value of `key` (e.g. `rc=`) in a result line the guest printed as `word key=value ...`;
/// empty when absent.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or("")
}

/// The NIC watchdog's or the 8390 driver's line about a stalled transmitter, if the guest
/// printed one.
pub fn nic_watchdog(console: &str) -> Option<&str> {
    console
        .lines()
        .find(|l| l.contains("NETDEV WATCHDOG") || l.contains("Tx timed out"))
        .map(str::trim)
}
