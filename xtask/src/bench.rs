//! `cargo xtask bench`: benchmarks written to `docs/benchmarks.md` (one `##` section per
//! component, replaced in place) and `target/bench/results.json` (an array of
//! `{name, unit, value, reference}` objects, merged by name with the other sections' entries).
//!
//! Section "Certificate authority": mitm-ca's `ca_bench` example, natively (`bench-native`
//! profile) and as wasm (the shipped `release` profile) under node after wasm-bindgen.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::tools;

const CA_HEADING: &str = "## Certificate authority";

/// Runs the benchmarks; `args` may name the section (`ca`) and `--no-wasm` skips the wasm runs.
pub fn run(args: &[String]) -> Result<()> {
    let mut wasm = true;
    for arg in args {
        match arg.as_str() {
            "ca" | "mitm-ca" => {}
            "--no-wasm" => wasm = false,
            other => bail!("bench: unknown argument `{other}` (accepted: ca, --no-wasm)"),
        }
    }
    ca_section(wasm)
}

/// One line printed by a benchmark program.
#[derive(Debug, Clone)]
struct Measurement {
    name: String,
    unit: String,
    value: f64,
    iterations: u64,
}

/// The CA operations, in table order: (example name, description, native expectation in ns).
const CA_ROWS: [(&str, &str, Option<f64>); 5] = [
    (
        "ca_generate",
        "CA generation (ECDSA P-256 key + self-signed certificate)",
        None,
    ),
    (
        "leaf_new_host",
        "Leaf for a new host (shared leaf key: one ECDSA signature)",
        Some(1_000_000.0),
    ),
    (
        "leaf_new_host_per_host_key",
        "Leaf for a new host with `per_host_keys` (key generation + signature)",
        None,
    ),
    (
        "cache_hit",
        "Cache hit (host normalization + LRU lookup + `Arc` clone)",
        Some(10_000.0),
    ),
    (
        "tls_handshake_new_host",
        "Full in-memory TLS 1.3 handshake for a new host (issuance, server, client verifying the chain)",
        None,
    ),
];

fn ca_section(with_wasm: bool) -> Result<()> {
    let root = tools::workspace_root();
    let target = target_dir(&root);

    eprintln!("xtask bench: mitm-ca natively (profile bench-native)");
    let native_out = stdout_of(
        Command::new("cargo")
            .args(["run", "--profile", "bench-native", "-p", "mitm-ca"])
            .args(["--example", "ca_bench"])
            .current_dir(&root),
    )?;
    let native = parse_lines(&native_out, "native/")?;

    let wasm = if with_wasm {
        Some(run_ca_wasm(&root, &target)?)
    } else {
        None
    };

    let machine = Machine::detect();
    let section = ca_markdown(&native, wasm.as_deref(), &machine)?;
    let doc_path = root.join("docs/benchmarks.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap_or_default();
    std::fs::create_dir_all(root.join("docs"))?;
    std::fs::write(&doc_path, replace_section(&doc, CA_HEADING, &section))
        .with_context(|| format!("writing {}", doc_path.display()))?;

    let entries = ca_entries(&native, wasm.as_deref());
    let json_path = target.join("bench/results.json");
    merge_results(&json_path, entries)?;

    println!("{section}");
    eprintln!(
        "xtask bench: wrote {} and {}",
        doc_path.display(),
        json_path.display()
    );
    Ok(())
}

/// Builds the example for wasm32, binds it for node and runs it there.
fn run_ca_wasm(root: &Path, target: &Path) -> Result<Vec<Measurement>> {
    tools::ensure_wasm_toolchain()?;
    tools::ensure_programs(&[("node", "nodejs")])?;
    let runner = tools::ensure_wasm_bindgen_test_runner()?;
    let bindgen = runner.with_file_name("wasm-bindgen");
    eprintln!("xtask bench: mitm-ca as wasm (profile release) under node");
    tools::run(
        Command::new("cargo")
            .args([
                "build",
                "--release",
                "-p",
                "mitm-ca",
                "--example",
                "ca_bench",
            ])
            .args(["--target", "wasm32-unknown-unknown"])
            .current_dir(root),
    )?;
    let wasm = target.join("wasm32-unknown-unknown/release/examples/ca_bench.wasm");
    let out_dir = target.join("bench/mitm-ca-wasm");
    tools::run(
        Command::new(&bindgen)
            .args(["--target", "nodejs", "--out-dir"])
            .arg(&out_dir)
            .arg(&wasm),
    )?;
    let out = stdout_of(Command::new("node").arg(out_dir.join("ca_bench.js")))?;
    parse_lines(&out, "wasm/")
}

/// Runs a command with stderr shown live and returns its stdout.
fn stdout_of(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed with {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Parses the JSON lines `{"name","unit","value","iterations"}` whose name starts with `prefix`.
fn parse_lines(output: &str, prefix: &str) -> Result<Vec<Measurement>> {
    let mut found = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| l.starts_with('{')) {
        let json: Value =
            serde_json::from_str(line).with_context(|| format!("bad benchmark line {line:?}"))?;
        let name = json["name"].as_str().context("no name")?;
        let Some(short) = name.strip_prefix(prefix) else {
            continue;
        };
        found.push(Measurement {
            name: short.to_string(),
            unit: json["unit"].as_str().context("no unit")?.to_string(),
            value: json["value"].as_f64().context("no value")?,
            iterations: json["iterations"].as_u64().unwrap_or(0),
        });
    }
    if found.is_empty() {
        bail!("the benchmark printed no {prefix}* results:\n{output}");
    }
    Ok(found)
}

fn find<'a>(list: &'a [Measurement], name: &str) -> Option<&'a Measurement> {
    list.iter().find(|m| m.name == name)
}

/// The machine the numbers come from.
struct Machine {
    cpus: String,
    cpu_model: String,
    date: String,
    node: String,
    rustc: String,
}

impl Machine {
    fn detect() -> Self {
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
fn human(value: f64, unit: &str) -> String {
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

fn ca_markdown(
    native: &[Measurement],
    wasm: Option<&[Measurement]>,
    machine: &Machine,
) -> Result<String> {
    let mut md = String::new();
    md.push_str(CA_HEADING);
    md.push_str("\n\n");
    md.push_str(&format!(
        "Measured by `cargo xtask bench` on {} on {} CPUs ({}), {}; wasm under node {}. \
         Native: `cargo run --profile bench-native -p mitm-ca --example ca_bench` (opt-level 3). \
         wasm: the same example built with the shipped `release` profile (opt-level \"z\", LTO) \
         for `wasm32-unknown-unknown`, bound with wasm-bindgen for node, timed with \
         `performance.now()`. Mean per operation after a warm-up; the machine is shared with \
         other builds, so expect noise of ±20 %.\n\n",
        machine.date, machine.cpus, machine.cpu_model, machine.rustc, machine.node
    ));
    md.push_str("| Operation | Native | wasm (node) | wasm / native | Iterations |\n");
    md.push_str("|---|---:|---:|---:|---:|\n");
    for (name, description, _) in CA_ROWS {
        let n = find(native, name).with_context(|| format!("native result {name} missing"))?;
        let (w, ratio) = match wasm.and_then(|w| find(w, name)) {
            Some(w) if w.unit == n.unit && n.value > 0.0 => (
                human(w.value, &w.unit),
                format!("{:.1}×", w.value / n.value),
            ),
            Some(w) => (human(w.value, &w.unit), "–".to_string()),
            None => ("not run".to_string(), "–".to_string()),
        };
        md.push_str(&format!(
            "| {description} | {} | {w} | {ratio} | {} |\n",
            human(n.value, &n.unit),
            n.iterations
        ));
    }
    md.push('\n');
    for (name, description, expectation) in CA_ROWS {
        let (Some(limit_ns), Some(n)) = (expectation, find(native, name)) else {
            continue;
        };
        let value_ns = if n.unit == "us" {
            n.value * 1e3
        } else {
            n.value
        };
        let verdict = if value_ns < limit_ns {
            "met"
        } else {
            "NOT met"
        };
        md.push_str(&format!(
            "- Expectation for native \"{description}\": under {}; measured {} ({verdict}).\n",
            human(limit_ns, "ns"),
            human(n.value, &n.unit)
        ));
    }
    md.push_str(
        "\nThe original proxy (c2w-net-proxy in Go) generates a fresh key and leaf on every \
         CONNECT; here a repeat host costs a cache hit and a new host one signature.\n",
    );
    Ok(md)
}

/// The results.json entries: natives with their expectation as reference, wasm with the
/// native value as reference (so the ratio can be recomputed).
fn ca_entries(native: &[Measurement], wasm: Option<&[Measurement]>) -> Vec<Value> {
    let mut entries = Vec::new();
    for (name, _, expectation) in CA_ROWS {
        if let Some(n) = find(native, name) {
            let reference = expectation.map(|ns| if n.unit == "us" { ns / 1e3 } else { ns });
            entries.push(entry(&format!("ca/native/{name}"), n, reference));
            if let Some(w) = wasm.and_then(|w| find(w, name)) {
                let reference = (w.unit == n.unit).then_some(n.value);
                entries.push(entry(&format!("ca/wasm/{name}"), w, reference));
            }
        }
    }
    entries
}

fn entry(name: &str, m: &Measurement, reference: Option<f64>) -> Value {
    json!({ "name": name, "unit": m.unit, "value": m.value, "reference": reference })
}

/// Replaces the `heading` section (up to the next `## ` heading) of a Markdown document, or
/// appends it; a missing document gets a title first.
fn replace_section(doc: &str, heading: &str, section: &str) -> String {
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
fn merge_results(path: &Path, entries: Vec<Value>) -> Result<()> {
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

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_merge_by_name() {
        let text = r#"[{"name": "net/x", "unit": "MB/s", "value": 12.5, "reference": null, "extra": [1, true, "a\"b\u00e9"]}]"#;

        let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
        let path = dir.join("results.json");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, text).unwrap();
        let m = Measurement {
            name: "leaf_new_host".into(),
            unit: "us".into(),
            value: 30.0,
            iterations: 10,
        };
        merge_results(
            &path,
            vec![entry("ca/native/leaf_new_host", &m, Some(1000.0))],
        )
        .unwrap();
        let m2 = Measurement { value: 31.0, ..m };
        merge_results(&path, vec![entry("ca/native/leaf_new_host", &m2, None)]).unwrap();
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
            replace_section("", CA_HEADING, new),
            "# Benchmarks\n\n## Certificate authority\n\nnew table\n"
        );
        let doc = "# Benchmarks\n\n## Network\n\nnet\n\n## Certificate authority\n\nold\n\n## Proxy\n\np\n";
        assert_eq!(
            replace_section(doc, CA_HEADING, new),
            "# Benchmarks\n\n## Network\n\nnet\n\n## Certificate authority\n\nnew table\n\n## Proxy\n\np\n"
        );
        assert_eq!(
            replace_section("# Benchmarks\n\n## Network\n\nnet\n", CA_HEADING, new),
            "# Benchmarks\n\n## Network\n\nnet\n\n## Certificate authority\n\nnew table\n"
        );
    }

    #[test]
    fn parses_benchmark_lines() {
        let out = "noise\n{\"name\":\"wasm/cache_hit\",\"unit\":\"ns\",\"value\":690.3,\"iterations\":200000}\n{\"name\":\"native/x\",\"unit\":\"us\",\"value\":1,\"iterations\":1}\n";
        let wasm = parse_lines(out, "wasm/").unwrap();
        assert_eq!(wasm.len(), 1);
        assert_eq!(wasm[0].name, "cache_hit");
        assert_eq!(wasm[0].iterations, 200_000);
        assert!(parse_lines("nothing", "wasm/").is_err());
        assert_eq!(human(690.3, "ns"), "690 ns");
        assert_eq!(human(27.5, "us"), "27.5 µs");
        assert_eq!(human(3972.9, "us"), "3.97 ms");
    }
}
