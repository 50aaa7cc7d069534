//! `cargo xtask build-wasm [--check] [--no-opt]`: the browser package in `dist/`, an npm
//! package: the release wasm (size-optimized, LTO) through wasm-bindgen (ES module glue and
//! TypeScript declarations), `wasm-opt -Oz` when binaryen from npm can be installed, the
//! hand-written JS (`stack-worker.js`, `v86-adapter.js`) and their `.d.ts`,
//! `c2w-net-proxy.wasm` (the name container2wasm's page asks for), package.json and README.
//! `--check` then runs the node smoke test ([`node_smoke`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::tools::{ensure_programs, ensure_wasm_toolchain, have, run, workspace_root};

/// The binaryen release installed from npm for `wasm-opt` (Debian's 108 breaks the module).
const BINARYEN_VERSION: &str = "132.0.0";

/// The hand-written files copied from `c2w-net-proxy/js/` into the package.
const JS_FILES: &[&str] = &[
    "stack-worker.js",
    "stack-worker.d.ts",
    "v86-adapter.js",
    "v86-adapter.d.ts",
    "nic-pacer.js",
    "nic-pacer.d.ts",
    "guest-preview.js",
    "guest-preview.d.ts",
    "guest-sw.js",
];

/// In `stack-worker.js`, replaced by the glue's source so the worker is one self-contained
/// file (container2wasm's page serves only `stack-worker.js` and `c2w-net-proxy.wasm`).
const GLUE_MARKER: &str = "/* @embedded-glue */ null";

/// Wasm features rustc enables by default for wasm32-unknown-unknown (wasm-opt must keep them).
const WASM_FEATURES: &[&str] = &[
    "--enable-bulk-memory",
    "--enable-nontrapping-float-to-int",
    "--enable-sign-ext",
    "--enable-mutable-globals",
    "--enable-multivalue",
    "--enable-reference-types",
];

/// Builds `dist/`, prints the sizes, and with `--check` runs the node smoke test.
pub fn run_build(args: &[String]) -> Result<PathBuf> {
    let mut check = false;
    // XTASK_WASM_NO_OPT=1: skip wasm-opt everywhere dist/ is built (the demo, bench tab), so
    // the module keeps its function names for a profile (perf with V8's --perf-basic-prof).
    let mut optimize = std::env::var_os("XTASK_WASM_NO_OPT").is_none();
    for arg in args {
        match arg.as_str() {
            "--check" => check = true,
            "--no-opt" => optimize = false,
            other => bail!("build-wasm: unknown argument `{other}` (accepted: --check, --no-opt)"),
        }
    }
    ensure_wasm_toolchain()?;
    let root = workspace_root();
    run(Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
            "-p",
            "c2w-net-proxy",
            "--lib",
        ])
        .current_dir(&root))?;
    // Where cargo put it: CARGO_TARGET_DIR is honoured like cargo does.
    let wasm =
        crate::bench::target_dir(&root).join("wasm32-unknown-unknown/release/c2w_net_proxy.wasm");
    let dist = root.join("dist");
    if dist.exists() {
        std::fs::remove_dir_all(&dist).context("clearing dist/")?;
    }
    std::fs::create_dir_all(&dist)?;
    let mut bindgen = wasm_bindgen_cli_support::Bindgen::new();
    bindgen
        .input_path(&wasm)
        .web(true)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .typescript(true)
        // `init()` with no argument loads the .wasm next to the module (import.meta.url),
        // as embedders expect; wasm-bindgen 0.2.130 omits that default unless asked.
        .omit_default_module_path(false)
        .out_name("c2w_net_proxy");
    bindgen
        .generate(&dist)
        .map_err(|e| anyhow::anyhow!("wasm-bindgen: {e}"))?;

    let out_wasm = dist.join("c2w_net_proxy_bg.wasm");
    let raw = std::fs::metadata(&out_wasm)?.len();
    let gz = gzip_size(&out_wasm)?;
    println!("xtask: wasm after wasm-bindgen: {raw} bytes ({gz} bytes gzip)");
    if optimize {
        match ensure_wasm_opt() {
            Ok(wasm_opt) => optimize_wasm(&wasm_opt, &out_wasm)?,
            Err(err) => {
                eprintln!("xtask: warning: wasm-opt unavailable, package left unoptimized: {err:#}")
            }
        }
    }

    std::fs::copy(&out_wasm, dist.join("c2w-net-proxy.wasm"))?;
    optional_config_param(&dist.join("c2w_net_proxy.d.ts"))?;
    copy_js(&root.join("c2w-net-proxy/js"), &dist)?;
    write_package_json(&dist)?;
    if have("node") {
        check_instantiates(&dist)?;
    } else {
        eprintln!("xtask: warning: node not found, the module's instantiation was not checked");
    }

    let raw = std::fs::metadata(&out_wasm)?.len();
    let gz = gzip_size(&out_wasm)?;
    println!(
        "xtask: dist/ ready: c2w_net_proxy_bg.wasm {raw} bytes ({gz} bytes gzip), in {}",
        dist.display()
    );
    if check {
        node_smoke(&dist)?;
    }
    Ok(dist)
}

/// `wasm-opt` from the npm package `binaryen`, installed under `target/tools/binaryen`.
fn ensure_wasm_opt() -> Result<PathBuf> {
    let prefix = workspace_root().join("target/tools/binaryen");
    let bin = prefix.join("node_modules/.bin/wasm-opt");
    let installed = prefix.join("node_modules/binaryen/package.json");
    let current = std::fs::read_to_string(&installed)
        .map(|s| s.contains(&format!("\"version\": \"{BINARYEN_VERSION}\"")))
        .unwrap_or(false);
    if bin.exists() && current {
        return Ok(bin);
    }
    ensure_programs(&[("node", "nodejs"), ("npm", "npm")])?;
    eprintln!(
        "xtask: installing binaryen {BINARYEN_VERSION} from npm into {}",
        prefix.display()
    );
    std::fs::create_dir_all(&prefix)?;
    run(Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
        .arg(&prefix)
        .arg(format!("binaryen@{BINARYEN_VERSION}")))?;
    if !bin.exists() {
        bail!("npm installed binaryen but {} is missing", bin.display());
    }
    Ok(bin)
}

/// Runs `wasm-opt -Oz` on `wasm` in place.
fn optimize_wasm(wasm_opt: &Path, wasm: &Path) -> Result<()> {
    let tmp = wasm.with_extension("opt.wasm");
    run(Command::new(wasm_opt)
        .arg("-Oz")
        .args(WASM_FEATURES)
        .arg(wasm)
        .arg("-o")
        .arg(&tmp))?;
    std::fs::rename(&tmp, wasm)?;
    let raw = std::fs::metadata(wasm)?.len();
    let gz = gzip_size(wasm)?;
    println!("xtask: wasm after wasm-opt -Oz: {raw} bytes ({gz} bytes gzip)");
    Ok(())
}

/// wasm-bindgen types an `Option<JsValue>` parameter with an unchecked type as a required
/// parameter; these are optional (`NetProxy.create()`, `proxy.connect(80)` are valid).
fn optional_config_param(dts: &Path) -> Result<()> {
    const OPTIONAL: &[(&str, &str)] = &[
        (
            "static create(config: NetProxyConfig & NetProxyHooks)",
            "static create(config?: NetProxyConfig & NetProxyHooks)",
        ),
        (
            "connect(port: number, options: GuestAddress)",
            "connect(port: number, options?: GuestAddress)",
        ),
        (
            "probe(port: number, options: ProbeOptions)",
            "probe(port: number, options?: ProbeOptions)",
        ),
    ];
    let mut text = std::fs::read_to_string(dts)?;
    for (required, optional) in OPTIONAL {
        if !text.contains(required) {
            bail!(
                "{} has no `{required}` (wasm-bindgen output changed?)",
                dts.display()
            );
        }
        text = text.replacen(required, optional, 1);
    }
    std::fs::write(dts, text)?;
    Ok(())
}

/// Copies the hand-written JS and declarations, embedding the glue into the worker.
fn copy_js(js_dir: &Path, dist: &Path) -> Result<()> {
    let glue = std::fs::read_to_string(dist.join("c2w_net_proxy.js"))?;
    for name in JS_FILES {
        let src = js_dir.join(name);
        let mut text =
            std::fs::read_to_string(&src).with_context(|| format!("reading {}", src.display()))?;
        if *name == "stack-worker.js" {
            if !text.contains(GLUE_MARKER) {
                bail!("{} lacks the marker {GLUE_MARKER}", src.display());
            }
            text = text.replacen(GLUE_MARKER, &js_string(&glue), 1);
        }
        std::fs::write(dist.join(name), text)?;
    }
    std::fs::copy(js_dir.join("README.md"), dist.join("README.md"))
        .context("copying the package README")?;
    Ok(())
}

/// `s` as a JavaScript string literal.
fn js_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8 + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn write_package_json(dist: &Path) -> Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let json = format!(
        r#"{{
  "name": "c2w-net-proxy",
  "version": "{version}",
  "description": "The network behind an emulated NIC in the browser: DHCP, DNS, TCP/IP and an HTTP(S) proxy over fetch()",
  "type": "module",
  "module": "c2w_net_proxy.js",
  "main": "c2w_net_proxy.js",
  "types": "c2w_net_proxy.d.ts",
  "exports": {{
    ".": {{ "types": "./c2w_net_proxy.d.ts", "default": "./c2w_net_proxy.js" }},
    "./v86-adapter.js": {{ "types": "./v86-adapter.d.ts", "default": "./v86-adapter.js" }},
    "./nic-pacer.js": {{ "types": "./nic-pacer.d.ts", "default": "./nic-pacer.js" }},
    "./guest-preview.js": {{ "types": "./guest-preview.d.ts", "default": "./guest-preview.js" }},
    "./guest-sw.js": "./guest-sw.js",
    "./stack-worker.js": "./stack-worker.js",
    "./c2w-net-proxy.wasm": "./c2w-net-proxy.wasm",
    "./c2w_net_proxy_bg.wasm": "./c2w_net_proxy_bg.wasm"
  }},
  "files": [
    "c2w_net_proxy.js", "c2w_net_proxy.d.ts", "c2w_net_proxy_bg.wasm", "c2w_net_proxy_bg.wasm.d.ts",
    "c2w-net-proxy.wasm", "stack-worker.js", "stack-worker.d.ts", "v86-adapter.js", "v86-adapter.d.ts", "nic-pacer.js", "nic-pacer.d.ts",
    "guest-preview.js", "guest-preview.d.ts", "guest-sw.js", "README.md"
  ],
  "sideEffects": false,
  "license": "Apache-2.0"
}}
"#
    );
    std::fs::write(dist.join("package.json"), json)?;
    Ok(())
}

/// Runs `node` with `args` in `dir`, failing after `limit` (the process is killed) or on a
/// non-zero exit; returns stdout.
fn node_with_timeout(dir: &Path, args: &[&str], limit: Duration) -> Result<String> {
    let mut child = Command::new("node")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting node")?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let mut out = String::new();
            if let Some(mut stdout) = child.stdout.take() {
                std::io::Read::read_to_string(&mut stdout, &mut out)?;
            }
            if !status.success() {
                bail!("node {} failed with {status}:\n{out}", args.join(" "));
            }
            return Ok(out);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "node {} did not finish within {limit:?} (killed)",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Instantiates the packaged module under node (catches a wasm-opt that broke it).
fn check_instantiates(dist: &Path) -> Result<()> {
    let script = r#"
import init, { version } from "./c2w_net_proxy.js";
import { readFile } from "node:fs/promises";
await init({ module_or_path: await readFile("./c2w-net-proxy.wasm") });
console.log(version());
"#;
    let out = node_with_timeout(
        dist,
        &["--input-type=module", "-e", script],
        Duration::from_secs(60),
    )
    .context("the packaged wasm does not instantiate")?;
    println!(
        "xtask: the packaged module instantiates under node (version {})",
        out.trim()
    );
    Ok(())
}

/// The node tests of a built `dist/`: `smoke.mjs` (DHCP through `pushFrame`/`onFrame` and
/// through `pushStream`/`onStream`, stats, the CA, pcap capture, config errors, `close`, the
/// v86 adapter on a fake bus), `relay.mjs` (`stack-worker.js` against container2wasm's
/// relay protocol, with and without `Atomics.waitAsync`) and `pacer.mjs` (nic-pacer.js
/// against a model of v86's ne2k ring and Linux's 8390 driver), all in `c2w-net-proxy/js/tests/`.
pub fn node_smoke(dist: &Path) -> Result<()> {
    ensure_programs(&[("node", "nodejs")])?;
    let dist = dist
        .canonicalize()
        .with_context(|| format!("{} is not built", dist.display()))?;
    let dist_arg = dist.to_string_lossy().into_owned();
    for (name, success) in [
        ("smoke.mjs", "smoke: all "),
        ("relay.mjs", "relay: all "),
        ("pacer.mjs", "pacer: all "),
    ] {
        let script = workspace_root().join("c2w-net-proxy/js/tests").join(name);
        let script = script.to_string_lossy().into_owned();
        let out = node_with_timeout(&dist, &[&script, &dist_arg], Duration::from_secs(120))?;
        print!("{out}");
        if !out.lines().any(|l| l.starts_with(success)) {
            bail!("the node test {name} did not report success");
        }
    }
    Ok(())
}

/// The size of `path` gzip-compressed at the best level.
pub fn gzip_size(path: &Path) -> Result<u64> {
    let data = std::fs::read(path)?;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&data)?;
    Ok(enc.finish()?.len() as u64)
}
