//! Section "Certificate authority": mitm-ca's `ca_bench` example, natively (`bench-native`
//! profile) and as wasm (the shipped `release` profile) under node after wasm-bindgen.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::{human, publish, stdout_of, target_dir, Machine};
use crate::tools;

const CA_HEADING: &str = "## Certificate authority";

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

/// The CA section: natively and, with `with_wasm`, as wasm under node.
pub(super) fn section(with_wasm: bool) -> Result<()> {
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
    publish(CA_HEADING, &section, ca_entries(&native, wasm.as_deref()))
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

#[cfg(test)]
mod tests {
    use super::*;

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
