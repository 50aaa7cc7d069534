//! `cargo xtask bench`: benchmarks written to `docs/benchmarks.md` (one `##` section per
//! component, replaced in place) and `target/bench/results.json` (an array of
//! `{name, unit, value, reference}` objects, merged by name with the other sections' entries).
//!
//! Sections: `ca` (mitm-ca natively and as wasm, [`ca`]), `net` (the guest's traffic on every
//! path side by side with the direct path, [`net`]), `size` (the shipped package, [`size`]),
//! `tab` (the demo's v86 guest through our adapter and v86's own, fetch and Wisp, [`tab`]),
//! `inbound` (a server in the guest through `--forward`, [`inbound`]), `websocket` (a guest's
//! WebSocket through the runner, [`websocket`]), `loss` (downloads under 5% random loss through
//! the runner and directly, [`loss`]).

mod ca;
mod inbound;
mod loss;
mod net;
// Until net.rs calls them (the v86 peer, the bridge and relay references).
mod peer;
mod reference;
mod routes;
mod size;
mod tab;
mod websocket;
mod workload;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::harness::browser::page_server::PageServer;
use crate::tools;

const USAGE: &str =
    "usage: cargo xtask bench [ca] [size] [inbound] [websocket] [loss] [tab [--only ROWS]...] [net [--quick] [--downloads MIB,...] [--concurrent N] [--only PATH]...] [--no-wasm]

  ca      mitm-ca natively and as wasm under node
  size    dist/ raw and gzipped
  tab     the demo's v86 guest in Chromium: our adapter (paced and not, fetch and Wisp relay,
          jumbo frames), its in-page ceiling, and v86's FetchNetworkAdapter and
          WispNetworkAdapter, on the virtio and ne2k NICs
          --only ROWS   relay (the relay rows and the fetch rows they compare with), fetch
                        (ours, the ceiling, v86's fetch), ceiling, shipped (ours only),
                        mtu, pacing, virtio, ne2k (repeatable; groups and NICs combine; rows
                        this run does not measure are kept in the doc as they were)
  inbound a server in the guest through the runner's --forward, next to the same server on
          the host (needs root)
  websocket  a guest's WebSocket through the runner next to the same client on the host
          (round trips per second, 1 MiB messages; needs root)
  loss    downloads and an upload under 5% random loss (nftables drops in the guest) through
          the runner and directly over a veth, next to the same loss-free (needs root)
  net     the guest's traffic on every path next to the direct path (needs root)
          --quick       small sizes, for checking the harness
          --downloads N,M  download sizes in MiB instead of the plan's (e.g. 512 with
                        --quick: one long download per path, the rest kept short)
          --concurrent N   N simultaneous 1 MiB downloads instead of the plan's
          --only PATH   native, relay (the runner with --relay), browser, browser-relay
                        (NetProxy in Chromium with a Wisp relay, and browser to compare
                        with), c2w, v86, mtu, reference (repeatable; default all)
With no section named, every section runs.";

/// Runs the benchmarks named in `args` (all when none is named).
pub fn run(args: &[String]) -> Result<()> {
    let mut wasm = true;
    let mut sections = Vec::new();
    let mut plan = net::Plan::full();
    let mut only = Vec::new();
    let mut downloads = None;
    let mut concurrent = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "ca" | "mitm-ca" => sections.push("ca"),
            "net" => sections.push("net"),
            "size" => sections.push("size"),
            "tab" => sections.push("tab"),
            "inbound" => sections.push("inbound"),
            "websocket" => sections.push("websocket"),
            "loss" => sections.push("loss"),
            "--quick" => plan = net::Plan::quick(),
            "--concurrent" => {
                let n = args.next().context("--concurrent needs a count")?;
                concurrent = Some(
                    n.parse::<usize>()
                        .with_context(|| format!("--concurrent {n:?}: want a count"))?,
                );
            }
            "--downloads" => {
                let list = args.next().context("--downloads needs sizes in MiB")?;
                downloads = Some(
                    list.split(',')
                        .map(|n| n.trim().parse::<u64>().map(|n| n << 20))
                        .collect::<Result<Vec<_>, _>>()
                        .with_context(|| format!("--downloads {list:?}: want MiB, e.g. 64,512"))?,
                );
            }
            "--only" => only.push(args.next().context("--only needs a path name")?.clone()),
            "--no-wasm" => wasm = false,
            other => bail!("bench: unknown argument `{other}`\n{USAGE}"),
        }
    }
    plan.only = only;
    if let Some(downloads) = downloads {
        plan.downloads = downloads;
    }
    if let Some(n) = concurrent {
        plan.concurrency = vec![n];
        plan.concurrent_size = 1 << 20;
    }
    if sections.is_empty() {
        sections = vec!["ca", "size", "tab", "net", "inbound", "websocket", "loss"];
    }
    if (sections.contains(&"net")
        || sections.contains(&"tab")
        || sections.contains(&"inbound")
        || sections.contains(&"websocket")
        || sections.contains(&"loss"))
        && std::env::var_os(OPTIMIZED).is_none()
    {
        return rerun_optimized();
    }
    for section in sections {
        match section {
            "ca" => ca::section(wasm)?,
            "net" => net::section(&plan)?,
            "size" => size::section()?,
            "tab" => tab::section_run(&plan.only)?,
            "inbound" => inbound::section()?,
            "websocket" => websocket::section()?,
            "loss" => loss::section()?,
            _ => unreachable!("sections are parsed above"),
        }
    }
    Ok(())
}

/// Set in the environment of the optimized re-run (so it does not re-run itself again).
const OPTIMIZED: &str = "C2W_XTASK_BENCH_OPTIMIZED";

/// Re-runs this command with xtask built by the `bench-tools` profile (optimized), so the
/// origin servers, the blob generator and the hashing are as fast as the paths they serve.
fn rerun_optimized() -> Result<()> {
    let root = tools::workspace_root();
    eprintln!("xtask bench: building xtask with the bench-tools profile");
    tools::run(
        Command::new("cargo")
            .args([
                "build",
                "--quiet",
                "--profile",
                "bench-tools",
                "-p",
                "xtask",
            ])
            .current_dir(&root),
    )?;
    let exe = target_dir(&root).join("bench-tools/xtask");
    let status = Command::new(&exe)
        .arg("bench")
        .args(std::env::args().skip(2))
        .current_dir(&root)
        .env(OPTIMIZED, "1")
        .status()
        .with_context(|| format!("starting {}", exe.display()))?;
    if !status.success() {
        bail!("the optimized bench run failed ({status})");
    }
    Ok(())
}

/// Writes one section into docs/benchmarks.md (replacing its old text) and merges its entries
/// into target/bench/results.json.
pub(super) fn publish(heading: &str, section: &str, entries: Vec<Value>) -> Result<()> {
    let root = tools::workspace_root();
    let doc_path = root.join("docs/benchmarks.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap_or_default();
    std::fs::create_dir_all(root.join("docs"))?;
    std::fs::write(&doc_path, replace_section(&doc, heading, section))
        .with_context(|| format!("writing {}", doc_path.display()))?;
    let json_path = target_dir(&root).join("bench/results.json");
    merge_results(&json_path, entries)?;
    println!("{section}");
    eprintln!(
        "xtask bench: wrote {} and {}",
        doc_path.display(),
        json_path.display()
    );
    Ok(())
}

/// Runs a command with stderr shown live and returns its stdout.
pub(super) fn stdout_of(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed with {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The machine the numbers come from.
pub(super) struct Machine {
    pub(super) cpus: String,
    pub(super) cpu_model: String,
    pub(super) date: String,
    pub(super) node: String,
    pub(super) rustc: String,
}

impl Machine {
    pub(super) fn detect() -> Self {
        let cmd = |program: &str, args: &[&str]| {
            tools::output(Command::new(program).args(args))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".to_string())
        };
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".to_string());
        Self {
            cpus: cmd("nproc", &[]),
            cpu_model,
            date: cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            node: cmd("node", &["--version"]),
            rustc: cmd("rustc", &["--version"]),
        }
    }
}

/// Formats a value for people: µs below 1 ms, ms above; ns below 1 µs.
pub(super) fn human(value: f64, unit: &str) -> String {
    let ns = match unit {
        "ns" => value,
        "us" => value * 1e3,
        "ms" => value * 1e6,
        "s" => value * 1e9,
        _ => return format!("{value:.3} {unit}"),
    };
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

/// Replaces the `heading` section (up to the next `## ` heading) of a Markdown document, or
/// appends it; a missing document gets a title first.
pub(super) fn replace_section(doc: &str, heading: &str, section: &str) -> String {
    let section = format!("{}\n", section.trim_end());
    if doc.trim().is_empty() {
        return format!("# Benchmarks\n\n{section}");
    }
    let lines: Vec<&str> = doc.lines().collect();
    let Some(start) = lines.iter().position(|l| l.trim_end() == heading) else {
        return format!("{}\n\n{section}", doc.trim_end());
    };
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with("## "))
        .map(|i| start + 1 + i)
        .unwrap_or(lines.len());
    let mut out = String::new();
    for line in &lines[..start] {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&section);
    if end < lines.len() {
        out.push('\n');
        for line in &lines[end..] {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Writes `entries` into the JSON array at `path`, replacing entries of the same name and
/// keeping everyone else's.
pub(super) fn merge_results(path: &Path, entries: Vec<Value>) -> Result<()> {
    let mut all = match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => match serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?
        {
            Value::Array(items) => items,
            _ => bail!("{} is not a JSON array", path.display()),
        },
        _ => Vec::new(),
    };
    for new in entries {
        match all.iter_mut().find(|old| old["name"] == new["name"]) {
            Some(old) => *old = new,
            None => all.push(new),
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(&Value::Array(all))? + "\n";
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `target/` under `root`).
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// The bench's page server: its own pages (`xtask/bench/pages/`: the echo peer, the idle
/// page, the relay reference), then the pages it shares with the browser e2e
/// (`xtask/browser/`), then `dist`; `config` (JSON) at `/config.json`.
pub(super) fn page_server(dist: &Path, config: String) -> Result<PageServer> {
    let root = tools::workspace_root();
    let roots = vec![
        root.join("xtask/bench/pages"),
        root.join("xtask/browser"),
        dist.to_path_buf(),
    ];
    PageServer::serve(0, roots, Some(config))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Status line of `GET path` from `base` (`http://127.0.0.1:PORT`).
    fn status_of(base: &str, path: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        let text = String::from_utf8_lossy(&got);
        text.lines().next().unwrap_or("").to_string()
    }

    #[test]
    fn page_server_serves_the_bench_pages_and_the_shared_ones() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-pages-{}", std::process::id()));
        let dist = tools::fresh_dir(&dir).unwrap();
        let pages = page_server(&dist, "{}".into()).unwrap();
        for path in [
            "/relay-bench.html",
            "/relay-bench.js",
            "/relay-bench-worker.js",
            "/echo.html",
            "/echo.js",
            "/idle.html",
            "/relay-protocol.js",
            "/report.js",
            "/e2e.html",
            "/c2w.html",
            "/config.json",
        ] {
            let status = status_of(&pages.base, path);
            assert!(status.contains(" 200 "), "{path}: {status}");
        }
        drop(pages);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn results_merge_by_name() {
        let text = r#"[{"name": "net/x", "unit": "MB/s", "value": 12.5, "reference": null, "extra": [1, true, "a\"b\u00e9"]}]"#;

        let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
        let path = dir.join("results.json");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, text).unwrap();
        let leaf = |value: f64, reference: Option<f64>| json!({ "name": "ca/native/leaf_new_host", "unit": "us", "value": value, "reference": reference });
        merge_results(&path, vec![leaf(30.0, Some(1000.0))]).unwrap();
        merge_results(&path, vec![leaf(31.0, None)]).unwrap();
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let items = written.as_array().expect("an array");
        assert_eq!(items.len(), 2, "other sections kept, same name replaced");
        assert_eq!(items[0]["name"], "net/x");
        assert_eq!(items[0]["extra"][2], "a\"b\u{e9}");
        assert_eq!(items[1]["value"], 31.0);
        assert_eq!(items[1]["reference"], Value::Null);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn sections_are_replaced_in_place() {
        let new = "## Certificate authority\n\nnew table\n";
        assert_eq!(
            replace_section("", "## Certificate authority", new),
            "# Benchmarks\n\n## Certificate authority\n\nnew table\n"
        );
        let doc = "# Benchmarks\n\n## Network\n\nnet\n\n## Certificate authority\n\nold\n\n## Proxy\n\np\n";
        assert_eq!(
            replace_section(doc, "## Certificate authority", new),
            "# Benchmarks\n\n## Network\n\nnet\n\n## Certificate authority\n\nnew table\n\n## Proxy\n\np\n"
        );
        assert_eq!(
            replace_section(
                "# Benchmarks\n\n## Network\n\nnet\n",
                "## Certificate authority",
                new
            ),
            "# Benchmarks\n\n## Network\n\nnet\n\n## Certificate authority\n\nnew table\n"
        );
    }
}
