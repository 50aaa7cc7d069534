//! Section "Package size": what a page downloads to run the proxy, from `dist/` as
//! `cargo xtask build-wasm` leaves it (rebuilt first): each file raw and gzipped
//! (level 9, what a static server with compression would send).

use std::io::Write;

use anyhow::{Context, Result};
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::json;

use super::{publish, Machine};
use crate::tools::workspace_root;

const HEADING: &str = "## Package size";
/// The target for the gzipped wasm.
const WASM_GZIP_TARGET: u64 = 700_000;

/// The files of dist/ a page loads, in table order.
const FILES: &[&str] = &[
    "c2w_net_proxy_bg.wasm",
    "c2w_net_proxy.js",
    "stack-worker.js",
    "v86-adapter.js",
];

fn gzip_len(data: &[u8]) -> Result<u64> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::new(9));
    enc.write_all(data)?;
    Ok(enc.finish()?.len() as u64)
}

/// Measures dist/ and publishes the section.
pub(super) fn section() -> Result<()> {
    let dist = workspace_root().join("dist");
    // Always rebuilt (cargo makes it quick when nothing changed): a stale dist/ would be
    // measured otherwise.
    crate::build::wasm::run_build(&[])?;
    let mut md = format!("{HEADING}\n\n");
    let machine = Machine::detect();
    md.push_str(&format!(
        "Measured by `cargo xtask bench size` on {} from `dist/` (`cargo xtask build-wasm`: \
         release profile, opt-level \"z\", LTO, wasm-opt -Oz). Gzip at level 9.\n\n\
         | File | Raw | gzip |\n|---|---:|---:|\n",
        machine.date
    ));
    let mut entries = Vec::new();
    let mut wasm_gzip = None;
    for file in FILES {
        let data = std::fs::read(dist.join(file)).with_context(|| format!("reading {file}"))?;
        let raw = data.len() as u64;
        let gz = gzip_len(&data)?;
        if file.ends_with(".wasm") {
            wasm_gzip = Some(gz);
        }
        md.push_str(&format!("| `{file}` | {raw} B | {gz} B |\n"));
        entries.push(json!({ "name": format!("size/{file}/raw"), "unit": "B", "value": raw, "reference": null }));
        entries.push(json!({
            "name": format!("size/{file}/gzip"),
            "unit": "B",
            "value": gz,
            "reference": file.ends_with(".wasm").then_some(WASM_GZIP_TARGET),
        }));
    }
    if let Some(gz) = wasm_gzip {
        md.push_str(&format!(
            "\nTarget: wasm gzip under {} KB: {:.0} KB — {}.\n",
            WASM_GZIP_TARGET / 1000,
            gz as f64 / 1000.0,
            if gz < WASM_GZIP_TARGET {
                "met"
            } else {
                "NOT met"
            }
        ));
    }
    md.push_str(
        "\nA container2wasm page loads only `stack-worker.js` (the glue is embedded) and the \
         wasm; a page using the JS API loads `c2w_net_proxy.js` and the wasm; the v86 adapter \
         is optional.\n",
    );
    publish(HEADING, &md, entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_shrinks_repetitive_data() {
        let data = vec![b'a'; 100_000];
        let n = gzip_len(&data).unwrap();
        assert!(n > 20 && n < 1000, "{n}");
    }
}
