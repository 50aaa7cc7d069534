//! `cargo xtask demo [--port PORT] [--check]`: a Linux VM (v86) in a browser tab whose only
//! network is c2w-net-proxy. Builds dist/ and the guest image, installs v86 and xterm.js from
//! npm, assembles a static site under `target/demo/site/` and serves it on 127.0.0.1:PORT with
//! the cross-origin isolation headers. The page shows the guest's own web server (busybox
//! httpd) in an iframe through the preview's Service Worker. `--check` boots it in headless
//! Chromium and asserts on the guest's console and on what that iframe loaded (docs/demo.md).

pub(crate) mod boot;
mod check;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::build::guest_image;
use crate::harness::browser::page_server::PageServer;
use crate::tools::{ensure_programs, run as run_cmd, workspace_root};

/// The pinned npm packages.
pub(crate) const V86_VERSION: &str = "0.5.462";
const XTERM_VERSION: &str = "6.0.0";

/// Entry point.
pub fn run(args: &[String]) -> Result<()> {
    let mut port: u16 = 8080;
    let mut check = false;
    let mut nics: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--nic" => nics.push(it.next().context("--nic needs virtio or ne2k")?.clone()),
            "--port" => {
                port = it
                    .next()
                    .context("--port needs a number")?
                    .parse()
                    .context("--port needs a number")?
            }
            other if other.starts_with("--port=") => {
                port = other["--port=".len()..]
                    .parse()
                    .context("--port needs a number")?
            }
            other => {
                bail!("demo: unknown argument `{other}` (--port PORT, --check [--nic virtio|ne2k])")
            }
        }
    }
    let site = prepare()?;
    if check {
        return check::run(&site, &nics);
    }
    let server = PageServer::serve(port, vec![site.dir.clone()], None)?;
    println!(
        "xtask: demo at {}/  (Ctrl-C stops it)\n\
         xtask: destinations are not restricted; add ?allow=loopback (or ?allow=*.example.org) to the URL to restrict them",
        server.base
    );
    server.wait();
    Ok(())
}

/// The assembled demo.
pub struct Site {
    /// The static site's directory.
    pub dir: PathBuf,
    /// What the guest image was built from.
    pub image: guest_image::ImageInfo,
}

/// Builds everything and assembles the static site.
pub fn prepare() -> Result<Site> {
    let root = workspace_root();
    ensure_programs(&[
        ("node", "nodejs"),
        ("npm", "npm"),
        ("/usr/share/seabios/bios-256k.bin", "seabios"),
        ("/usr/share/seabios/vgabios-stdvga.bin", "seabios"),
    ])?;
    let dist = crate::build::wasm::run_build(&[])?;
    let image = guest_image::build(false)?;
    let node = root.join("target/demo/node");
    npm_install(&node)?;

    let site = root.join("target/demo/site");
    if site.exists() {
        std::fs::remove_dir_all(&site)?;
    }
    let pages = root.join("xtask/demo");
    for f in ["index.html", "demo.js", "demo.css"] {
        copy(&pages.join(f), &site.join(f))?;
    }
    for entry in std::fs::read_dir(&dist).context("reading dist/")? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            copy(&entry.path(), &site.join("dist").join(entry.file_name()))?;
        }
    }
    for f in [
        "c2w_net_proxy.js",
        "c2w_net_proxy_bg.wasm",
        "v86-adapter.js",
        "guest-preview.js",
        "guest-sw.js",
    ] {
        if !site.join("dist").join(f).is_file() {
            bail!("dist/ has no {f}; did build-wasm change while it was copied? run again");
        }
    }
    // The preview's Service Worker at the site root: its scope (`preview/`, demo.js) must lie
    // below the directory it is served from.
    copy(&site.join("dist/guest-sw.js"), &site.join("guest-sw.js"))?;
    let v86 = node.join("node_modules/v86/build");
    copy(&v86.join("libv86.mjs"), &site.join("v86/libv86.mjs"))?;
    copy(&v86.join("v86.wasm"), &site.join("v86/v86.wasm"))?;
    let xterm = node.join("node_modules/@xterm/xterm");
    copy(&xterm.join("lib/xterm.mjs"), &site.join("xterm/xterm.mjs"))?;
    copy(&xterm.join("css/xterm.css"), &site.join("xterm/xterm.css"))?;
    copy(
        Path::new("/usr/share/seabios/bios-256k.bin"),
        &site.join("bios/bios.bin"),
    )?;
    copy(
        Path::new("/usr/share/seabios/vgabios-stdvga.bin"),
        &site.join("bios/vgabios.bin"),
    )?;
    copy(&image.kernel, &site.join("guest/bzImage"))?;
    copy(&image.initrd, &site.join("guest/initrd.img"))?;
    let config = serde_json::json!({
        "cmdline": guest_image::CMDLINE,
        "net": "virtio",
        "previewPort": guest_image::HTTPD_PORT,
        "v86": V86_VERSION,
        "xterm": XTERM_VERSION,
    });
    std::fs::write(site.join("config.json"), config.to_string())?;
    Ok(Site {
        dir: site,
        image: image.info,
    })
}

/// Installs the pinned v86 and xterm.js into `dir` unless they are there.
pub(crate) fn npm_install(dir: &Path) -> Result<()> {
    let installed = |pkg: &str, version: &str| {
        std::fs::read_to_string(dir.join("node_modules").join(pkg).join("package.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            // v86 publishes versions like "0.5.462+g5f9a90f".
            .and_then(|v| v["version"].as_str().map(str::to_string))
            .is_some_and(|v| v == version || v.starts_with(&format!("{version}+")))
    };
    if installed("v86", V86_VERSION) && installed("@xterm/xterm", XTERM_VERSION) {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    eprintln!("xtask: npm install v86@{V86_VERSION} @xterm/xterm@{XTERM_VERSION}");
    run_cmd(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(dir)
            .arg(format!("v86@{V86_VERSION}"))
            .arg(format!("@xterm/xterm@{XTERM_VERSION}")),
    )
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}
