//! `cargo xtask <command>`: everything the project needs beyond `cargo build`, installing what
//! it needs itself (Debian packages, the wasm target, wasm-bindgen's test runner).

//!
//! Where things are:
//! - `e2e/`: the end-to-end phases (native, faults, robust, browser) and their checks;
//! - `harness/`: what tests and benchmarks stand on: guest namespaces, origin servers,
//!   browsers, the page server, the TAP-to-WebSocket bridge, process and cleanup helpers;
//! - `bench/`: the benchmarks; `demo/`: the v86 demo; `build/`: the wasm package, the pcap
//!   fixtures and the demo's guest image;
//! - `test.rs` (the whole suite), `fuzz.rs`, `transport_node.rs`, `tools.rs`, `report.rs`.

mod bench;
mod build;
mod demo;
mod e2e;
mod fuzz;
mod harness;
mod report;
mod test;
mod tools;
mod transport_node;

use anyhow::{bail, Result};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test         fmt check, clippy (native + wasm32), unit tests (native + wasm32), fuzz --smoke,
               build-wasm, e2e (incl. faults and load), e2e --browser, demo --check
  build-wasm   build the browser package into dist/
  e2e [FILTER] end to end with a real Linux guest in a network namespace (needs root)
  e2e robust[: CHECK]
               only the robustness phase: 1,000 sequential and 256 concurrent connections,
               failing origins, a garbage-frame flood, a vanishing guest (stats back to idle)
  e2e relay [wisp-python|wisp-js]
               only the relay phase: the runner with --relay before real Wisp servers (raw TCP,
               TLS end to end, CONNECT tunnels, UDP, refusal, relay lost and back)
  e2e faults [PROFILE]
               only the fault phase: http/https transfers through --fault loss, reorder-dup, delay
  e2e --browser [chromium|firefox] [FILTER]
               the same kind of guest behind the browser build, in headless Chromium (default)
               or Firefox ESR, over a TAP-to-WebSocket bridge (needs root); FILTER
               `relay [wisp-python|wisp-js]` runs only the relay phase (NetProxy with
               config.relay before real Wisp servers, the page's own WebSocket)
  transport-node  fetch-transport's browser backend under node against a local origin
  fuzz [--smoke] [--seconds N] [TARGET...]
               the cargo-fuzz targets on nightly, one at a time (--smoke: ~10 s each)
  fixtures     re-capture the pcap fixtures under net-stack/tests/fixtures (needs root)
  bench        benchmarks; writes docs/benchmarks.md and target/bench/results.json
  guest-image [--force]
               the demo's i386 Linux guest from Debian packages, cached in target/guest-image/
  demo [--port PORT] [--check [--nic virtio|ne2k]]
               serve the demo on http://127.0.0.1:PORT (default 8080): a Linux VM in the tab
               (v86) networked through c2w-net-proxy; --check boots it in headless Chromium
               and asserts on the console";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(err) = run(&args) {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

fn run(args: &[String]) -> Result<()> {
    let Some((command, rest)) = args.split_first() else {
        println!("{USAGE}");
        return Ok(());
    };
    match command.as_str() {
        "test" => test::run_all(rest),
        "build-wasm" => build::wasm::run_build(rest).map(|_| ()),
        "e2e" => match rest.first().map(String::as_str) {
            Some("--browser") => e2e::browser::run(&rest[1..]),
            Some(flag) if flag.starts_with("--browser=") => {
                let mut args = vec![flag["--browser=".len()..].to_string()];
                args.extend_from_slice(&rest[1..]);
                e2e::browser::run(&args)
            }
            _ => e2e::run(rest),
        },
        "bench" => bench::run(rest),
        "fixtures" => build::fixtures::run(rest),
        "fuzz" => fuzz::run_cmd(rest),
        "transport-node" => transport_node::run(rest),
        "guest-image" => build::guest_image::run_cmd(rest),
        "demo" => demo::run(rest),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}
