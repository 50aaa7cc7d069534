//! `cargo xtask fuzz`: the cargo-fuzz (libFuzzer) targets of net-stack, http-proxy, mitm-ca and
//! fetch-transport, run one after the other on the nightly toolchain, with a summary of
//! executions and coverage per target. Each fuzz crate lives in `<crate>/fuzz/` outside the root workspace; its seed
//! corpus (in git) is `<crate>/fuzz/seeds/<target>/`, what the fuzzer finds goes to
//! `<crate>/fuzz/corpus/<target>/` and crashes to `<crate>/fuzz/artifacts/<target>/` (ignored).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::tools::{output, run, workspace_root};

const USAGE: &str = "usage: cargo xtask fuzz [--smoke] [--seconds N] [--runs N] [TARGET...]
       cargo xtask fuzz --seeds

  --smoke      about 10 s per target (the default is 10,000,000 runs or an hour, whichever first)
  --seconds N  run each target for N seconds
  --runs N     stop each target after N executions
  TARGET       a target name (frames, qemu_stream, dhcp, dns, request_head, body_decoder,
               client_hello, serve, response, websocket, pem_import, wisp_packet, wisp_client) or a crate
               (net-stack, http-proxy, mitm-ca, fetch-transport)
  --seeds      re-extract net-stack's seed inputs from the pcap fixtures and exit";

/// Every target: (crate directory, target name).
const TARGETS: &[(&str, &str)] = &[
    ("net-stack", "frames"),
    ("net-stack", "qemu_stream"),
    ("net-stack", "dhcp"),
    ("net-stack", "dns"),
    ("http-proxy", "request_head"),
    ("http-proxy", "body_decoder"),
    ("http-proxy", "client_hello"),
    ("http-proxy", "serve"),
    ("http-proxy", "response"),
    ("http-proxy", "websocket"),
    ("mitm-ca", "pem_import"),
    ("fetch-transport", "wisp_packet"),
    ("fetch-transport", "wisp_client"),
];

/// What one libFuzzer run reported.
#[derive(Debug, Default)]
struct Report {
    runs: Option<u64>,
    cov: Option<u64>,
    ft: Option<u64>,
    corpus: Option<String>,
    seconds: f64,
    failure: Option<String>,
}

pub fn run_cmd(args: &[String]) -> Result<()> {
    let mut seconds: Option<u64> = None;
    let mut runs: Option<u64> = None;
    let mut smoke = false;
    let mut wanted: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--smoke" => smoke = true,
            "--seconds" => {
                seconds = Some(
                    it.next()
                        .context("--seconds needs a value")?
                        .parse()
                        .context("--seconds")?,
                )
            }
            "--runs" => {
                runs = Some(
                    it.next()
                        .context("--runs needs a value")?
                        .parse()
                        .context("--runs")?,
                )
            }
            "--seeds" => return write_net_stack_seeds(&workspace_root()),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            flag if flag.starts_with('-') => bail!("unknown flag `{flag}`\n\n{USAGE}"),
            name => wanted.push(name.to_string()),
        }
    }
    let (seconds, runs) = match (smoke, seconds, runs) {
        (true, s, r) => (Some(s.unwrap_or(10)), r),
        (false, None, None) => (Some(3600), Some(10_000_000)),
        (false, s, r) => (s, r),
    };
    let selected: Vec<(&str, &str)> = TARGETS
        .iter()
        .copied()
        .filter(|(krate, target)| {
            wanted.is_empty() || wanted.iter().any(|w| w == krate || w == target)
        })
        .collect();
    if selected.is_empty() {
        bail!("no fuzz target matches {wanted:?}\n\n{USAGE}");
    }

    ensure_cargo_fuzz()?;
    let root = workspace_root();
    let started = Instant::now();
    let mut crates: Vec<&str> = selected.iter().map(|(c, _)| *c).collect();
    crates.dedup();
    for krate in &crates {
        let t = Instant::now();
        println!("xtask fuzz: building {krate}/fuzz");
        run(cargo_fuzz(&root).args(["build", "--fuzz-dir", &format!("{krate}/fuzz")]))?;
        println!(
            "xtask fuzz: built {krate}/fuzz in {:.0} s",
            t.elapsed().as_secs_f64()
        );
    }
    let log_dir = root.join("target/fuzz-logs");
    fs::create_dir_all(&log_dir)?;
    let mut reports = Vec::new();
    for (krate, target) in &selected {
        println!("xtask fuzz: running {krate}/{target}");
        let report = run_target(&root, krate, target, seconds, runs, &log_dir)?;
        println!("xtask fuzz: {target}: {}", describe(&report));
        reports.push((*target, report));
    }

    println!(
        "\nxtask fuzz: summary ({:.0} s in all, builds included)",
        started.elapsed().as_secs_f64()
    );
    println!(
        "{:<14} {:>12} {:>8} {:>8} {:>8}  result",
        "target", "executions", "cov", "ft", "seconds"
    );
    let mut failed = Vec::new();
    for (target, r) in &reports {
        println!(
            "{:<14} {:>12} {:>8} {:>8} {:>8.0}  {}",
            target,
            opt(r.runs),
            opt(r.cov),
            opt(r.ft),
            r.seconds,
            r.failure.as_deref().unwrap_or("ok")
        );
        if r.failure.is_some() {
            failed.push(*target);
        }
    }
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (logs in {})",
            failed.join(", "),
            log_dir.display()
        );
    }
    Ok(())
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "?".into(), |v| v.to_string())
}

fn describe(r: &Report) -> String {
    format!(
        "{} executions in {:.0} s, cov {} ft {} corpus {}{}",
        opt(r.runs),
        r.seconds,
        opt(r.cov),
        opt(r.ft),
        r.corpus.as_deref().unwrap_or("?"),
        r.failure
            .as_deref()
            .map(|f| format!(": FAILED: {f}"))
            .unwrap_or_default()
    )
}

/// `cargo +nightly fuzz` from the workspace root, without the stable toolchain that
/// `cargo xtask` runs under leaking into it.
fn cargo_fuzz(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .args(["+nightly", "fuzz"]);
    cmd
}

/// Installs the nightly toolchain and cargo-fuzz when they are missing.
fn ensure_cargo_fuzz() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let have = Command::new("cargo")
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["+nightly", "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !have {
        println!("xtask fuzz: installing cargo-fuzz");
        run(Command::new("cargo")
            .env_remove("RUSTUP_TOOLCHAIN")
            .args(["install", "cargo-fuzz"]))?;
    }
    Ok(())
}

fn run_target(
    root: &Path,
    krate: &str,
    target: &str,
    seconds: Option<u64>,
    runs: Option<u64>,
    log_dir: &Path,
) -> Result<Report> {
    let fuzz_dir = root.join(krate).join("fuzz");
    let corpus = fuzz_dir.join("corpus").join(target);
    let seeds = fuzz_dir.join("seeds").join(target);
    fs::create_dir_all(&corpus)?;
    let log_path = log_dir.join(format!("{target}.log"));
    let log = fs::File::create(&log_path)?;
    let mut cmd = cargo_fuzz(root);
    cmd.args(["run", "--fuzz-dir", &format!("{krate}/fuzz"), target])
        .arg(&corpus);
    if seeds.is_dir() {
        cmd.arg(&seeds);
    }
    cmd.args([
        "--",
        "-print_final_stats=1",
        "-timeout=10",
        "-rss_limit_mb=2048",
    ]);
    if let Some(s) = seconds {
        cmd.arg(format!("-max_total_time={s}"));
    }
    if let Some(r) = runs {
        cmd.arg(format!("-runs={r}"));
    }
    let started = Instant::now();
    let status = cmd
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let mut report = parse_libfuzzer(&text);
    report.seconds = started.elapsed().as_secs_f64();
    if !status.success() && report.failure.is_none() {
        report.failure = Some(format!("exited with {status}; see {}", log_path.display()));
    }
    if let Some(f) = &mut report.failure {
        f.push_str(&format!(" (log {})", log_path.display()));
    }
    Ok(report)
}

/// Reads executions, coverage and failures out of libFuzzer's output.
fn parse_libfuzzer(text: &str) -> Report {
    let mut r = Report::default();
    let field = |line: &str, name: &str| -> Option<String> {
        let mut words = line.split_whitespace();
        words.find(|w| *w == name)?;
        words.next().map(str::to_string)
    };
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            r.runs = n.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("Done ") {
            if r.runs.is_none() {
                r.runs = rest.split_whitespace().next().and_then(|n| n.parse().ok());
            }
        }
        if line.starts_with('#') && line.contains(" cov: ") {
            r.cov = field(line, "cov:").and_then(|v| v.parse().ok());
            r.ft = field(line, "ft:").and_then(|v| v.parse().ok());
            r.corpus = field(line, "corp:");
        }
    }
    let kind = text.lines().find_map(|l| {
        let l = l.trim();
        if l.contains("ERROR: libFuzzer: timeout") {
            Some("timeout")
        } else if l.contains("out-of-memory") || l.contains("ERROR: libFuzzer: malloc limit") {
            Some("out of memory")
        } else if l.contains("ERROR: libFuzzer: deadly signal")
            || l.contains("ERROR: AddressSanitizer")
            || l.contains("panicked at")
        {
            Some("crash")
        } else if l.contains("ERROR: libFuzzer:") {
            Some("libFuzzer error")
        } else {
            None
        }
    });
    if let Some(kind) = kind {
        let artifact = text
            .lines()
            .find_map(|l| l.split("Test unit written to ").nth(1))
            .map(|p| p.trim().to_string());
        r.failure = Some(match artifact {
            Some(p) => format!("{kind}, reproducer {p}"),
            None => kind.to_string(),
        });
    }
    r
}

/// Writes net-stack's seed inputs from the pcap fixtures' guest frames: whole captures for
/// `frames`, their UDP payloads for `dhcp` and `dns`, QEMU-framed streams for `qemu_stream`.
fn write_net_stack_seeds(root: &Path) -> Result<()> {
    const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
    let fixtures = root.join("net-stack/tests/fixtures");
    let seeds = root.join("net-stack/fuzz/seeds");
    let mut names: Vec<PathBuf> = fs::read_dir(&fixtures)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "pcap"))
        .collect();
    names.sort();
    let mut dhcp = Vec::new();
    let mut count = 0;
    for path in names {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let frames: Vec<Vec<u8>> = read_pcap(&path)?
            .into_iter()
            .filter(|f| f.len() >= 12 && f[6..12] == GUEST_MAC)
            .collect();
        // frames: [len: u16 BE][flags: 0x81 = repair checksums, 10 ms][frame]
        let mut records = Vec::new();
        for f in &frames {
            records.extend_from_slice(&(f.len() as u16).to_be_bytes());
            records.push(0x81);
            records.extend_from_slice(f);
        }
        write_seed(&seeds, "frames", &stem, &records)?;
        // qemu_stream: [max_frame_len / 8][chunk len][chunk]...
        let mut stream = Vec::new();
        for f in &frames {
            stream.extend_from_slice(&(f.len() as u32).to_be_bytes());
            stream.extend_from_slice(f);
        }
        let mut qemu = vec![0xbe];
        for chunk in stream.chunks(200) {
            qemu.push(chunk.len() as u8);
            qemu.extend_from_slice(chunk);
        }
        write_seed(&seeds, "qemu_stream", &stem, &qemu)?;
        count += 2;
        for (i, f) in frames.iter().enumerate() {
            let Some((port, payload)) = udp_payload(f) else {
                continue;
            };
            match port {
                67 => dhcp.push(payload.to_vec()),
                53 => {
                    write_seed(&seeds, "dns", &format!("{stem}-{i}"), payload)?;
                    count += 1;
                }
                _ => {}
            }
        }
    }
    // dhcp: [flags][split: u16 BE][first message][second message], e.g. DISCOVER + REQUEST.
    for (i, pair) in dhcp.chunks(2).enumerate() {
        for flags in [0u8, 3] {
            let mut seed = vec![flags];
            seed.extend_from_slice(&(pair[0].len() as u16).to_be_bytes());
            for m in pair {
                seed.extend_from_slice(m);
            }
            write_seed(&seeds, "dhcp", &format!("pcap-{i}-{flags}"), &seed)?;
            count += 1;
        }
    }
    println!("xtask fuzz: wrote {count} seeds under {}", seeds.display());
    Ok(())
}

fn write_seed(seeds: &Path, target: &str, name: &str, data: &[u8]) -> Result<()> {
    let dir = seeds.join(target);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join(name), data)?;
    Ok(())
}

/// The destination port and payload of an Ethernet/IPv4/UDP frame.
fn udp_payload(frame: &[u8]) -> Option<(u16, &[u8])> {
    if frame.get(12..14)? != [0x08, 0x00] || *frame.get(23)? != 17 {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let udp = frame.get(14 + ihl..)?;
    let len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    Some((u16::from_be_bytes([udp[2], udp[3]]), udp.get(8..len)?))
}

/// The packets of a classic pcap file (read by `pcap-file`: either byte order, µs or ns
/// timestamps).
fn read_pcap(path: &Path) -> Result<Vec<Vec<u8>>> {
    let file = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut reader = pcap_file::pcap::PcapReader::new(std::io::BufReader::new(file))
        .with_context(|| format!("{} is not a classic pcap file", path.display()))?;
    let mut packets = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.with_context(|| format!("reading {}", path.display()))?;
        packets.push(packet.data.into_owned());
    }
    Ok(packets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libfuzzer_summary() {
        let text = "#2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 30Mb\n\
                    #65757\tDONE   cov: 1234 ft: 5678 corp: 321/9Kb lim: 4096 exec/s: 7306 rss: 60Mb\n\
                    Done 65757 runs in 9 second(s)\n\
                    stat::number_of_executed_units: 65758\n";
        let r = parse_libfuzzer(text);
        assert_eq!(r.runs, Some(65758));
        assert_eq!((r.cov, r.ft), (Some(1234), Some(5678)));
        assert_eq!(r.corpus.as_deref(), Some("321/9Kb"));
        assert!(r.failure.is_none());
    }

    #[test]
    fn reports_crash_with_reproducer() {
        let text = "thread '<unnamed>' panicked at src/x.rs:1:1:\n\
                    ==1== ERROR: libFuzzer: deadly signal\n\
                    artifact_prefix='/w/artifacts/frames/'; Test unit written to /w/artifacts/frames/crash-abc\n";
        let r = parse_libfuzzer(text);
        assert_eq!(
            r.failure.as_deref(),
            Some("crash, reproducer /w/artifacts/frames/crash-abc")
        );
    }

    #[test]
    fn reports_timeout() {
        let text = "==1== ERROR: libFuzzer: timeout after 10 seconds\n\
                    Test unit written to ./timeout-1\n";
        assert_eq!(
            parse_libfuzzer(text).failure.as_deref(),
            Some("timeout, reproducer ./timeout-1")
        );
    }
}
