//! `cargo xtask guest-image`: the demo's Linux guest for v86, built from Debian i386 packages
//! only and cached under `target/guest-image/`: the kernel (`bzImage`) and an initramfs
//! (`initrd.img`, cpio newc + gzip) holding busybox-static, curl with its libraries, the NIC
//! modules and an `/init` that brings the network up through c2w-net-proxy's DHCP server,
//! starts `busybox httpd` on port 8000 with a site of its own (`/srv/www`), fetches the
//! proxy's CA certificate to `/.wasmenv/proxy.crt`, exports the proxy variables and starts a
//! shell on the serial console.

mod apt;
pub mod modules;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::tools::{ensure_programs, fresh_dir, output, run, workspace_root};
use apt::{deb_of, Apt};
use modules::ModuleTree;

/// Kernel command line the demo page boots with.
pub const CMDLINE: &str = "console=ttyS0 quiet cryptomgr.notests noisapnp tsc=reliable";

/// Packages besides the kernel whose files go into the initramfs (curl's dependency closure
/// is added by apt-cache).
const BASE_PACKAGES: &[&str] = &["busybox-static", "curl"];

/// The NIC drivers the guest needs: v86's virtio-net (the PCI transport and the net driver)
/// and its ne2k. Their dependencies are read from the modules themselves (`modules.rs`).
pub const NIC_MODULES: &[&str] = &["virtio_pci", "virtio_net", "ne2k-pci"];

/// The guest's files, kept as scripts beside the xtask sources.
const INIT: &str = include_str!("../../../guest-image/init");
const UDHCPC_SCRIPT: &str = include_str!("../../../guest-image/udhcpc.script");
const PROFILE: &str = include_str!("../../../guest-image/profile");

/// The guest's web site, served by `busybox httpd` on port 8000 from `/srv/www` (started by
/// `/init`; the demo page shows it in its preview): path below `/srv/www`, contents, and
/// whether it is executable (the CGI script).
const WWW: &[(&str, &str, bool)] = &[
    (
        "index.html",
        include_str!("../../../guest-image/www/index.html"),
        false,
    ),
    (
        "about.html",
        include_str!("../../../guest-image/www/about.html"),
        false,
    ),
    (
        "style.css",
        include_str!("../../../guest-image/www/style.css"),
        false,
    ),
    (
        "tux.svg",
        include_str!("../../../guest-image/www/tux.svg"),
        false,
    ),
    (
        "page.js",
        include_str!("../../../guest-image/www/page.js"),
        false,
    ),
    (
        "cgi-bin/status",
        include_str!("../../../guest-image/www/cgi-bin/status"),
        true,
    ),
];

/// The port the guest's web server listens on.
pub const HTTPD_PORT: u16 = 8000;

/// Bumped when the image's layout changes in a way the inputs below do not show.
const FORMAT: u32 = 2;

/// What `guest-image` produces.
pub struct GuestImage {
    /// The kernel.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// What it was built from.
    pub info: ImageInfo,
}

/// The kernel an image was built from and the modules it loads, as recorded in the image
/// (`/etc/c2w-image.env`) and beside it (`target/guest-image/image.env`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The kernel's Debian package, e.g. `linux-image-6.1.0-57-686-unsigned`.
    pub kernel_package: String,
    /// That package's version, e.g. `6.1.158-1`.
    pub kernel_version: String,
    /// The kernel release (`uname -r`), e.g. `6.1.0-57-686`.
    pub kernel_release: String,
    /// The NIC modules in load order.
    pub modules: Vec<String>,
}

impl ImageInfo {
    /// As shell assignments, which `/init` sources.
    fn to_env(&self) -> String {
        format!(
            "KERNEL_PACKAGE='{}'\nKERNEL_VERSION='{}'\nKERNEL_RELEASE='{}'\nMODULES='{}'\n",
            self.kernel_package,
            self.kernel_version,
            self.kernel_release,
            self.modules.join(" ")
        )
    }

    /// Reads what `to_env` wrote.
    fn from_env(text: &str) -> Option<Self> {
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(|v| v.trim_matches('\'').to_string())
        };
        Some(Self {
            kernel_package: get("KERNEL_PACKAGE")?,
            kernel_version: get("KERNEL_VERSION")?,
            kernel_release: get("KERNEL_RELEASE")?,
            modules: get("MODULES")?
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        })
    }

    /// One line for logs and docs.
    pub fn summary(&self) -> String {
        format!(
            "{} {} (kernel {}), NIC modules {}",
            self.kernel_package,
            self.kernel_version,
            self.kernel_release,
            self.modules.join(" ")
        )
    }
}

/// The directory of the cached image.
pub fn dir() -> PathBuf {
    workspace_root().join("target/guest-image")
}

/// Entry point of `cargo xtask guest-image [--force]`.
pub fn run_cmd(args: &[String]) -> Result<()> {
    let force = args.iter().any(|a| a == "--force");
    if let Some(other) = args.iter().find(|a| *a != "--force") {
        bail!("guest-image: unknown argument `{other}` (only --force)");
    }
    let image = build(force)?;
    for f in [&image.kernel, &image.initrd] {
        let len = std::fs::metadata(f)?.len();
        println!("xtask: {} ({:.1} MB)", f.display(), len as f64 / 1e6);
    }
    println!("xtask: built from {}", image.info.summary());
    Ok(())
}

/// A digest of everything the image is made from besides the packages, so that a cached
/// image made by an older recipe is rebuilt.
fn recipe() -> String {
    let mut h = Sha256::new();
    h.update(FORMAT.to_le_bytes());
    for part in [INIT, UDHCPC_SCRIPT, PROFILE, CMDLINE] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    for (path, text, exec) in WWW {
        for part in [path.as_bytes(), text.as_bytes(), &[u8::from(*exec)]] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    for list in [BASE_PACKAGES, NIC_MODULES] {
        h.update(list.join(",").as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The cached image, if it is complete and made by the current recipe.
fn cached(dir: &Path) -> Option<GuestImage> {
    let image = GuestImage {
        kernel: dir.join("bzImage"),
        initrd: dir.join("initrd.img"),
        info: ImageInfo::from_env(&std::fs::read_to_string(dir.join("image.env")).ok()?)?,
    };
    let same_recipe = std::fs::read_to_string(dir.join("recipe")).ok()? == recipe();
    (same_recipe && image.kernel.is_file() && image.initrd.is_file()).then_some(image)
}

/// Builds the image unless it is cached (or `force`).
pub fn build(force: bool) -> Result<GuestImage> {
    let dir = dir();
    if !force {
        if let Some(image) = cached(&dir) {
            eprintln!(
                "xtask: guest image cached in {} ({})",
                dir.display(),
                image.info.summary()
            );
            return Ok(image);
        }
    }
    ensure_programs(&[
        ("apt-get", "apt"),
        ("dpkg-deb", "dpkg"),
        ("cpio", "cpio"),
        ("gzip", "gzip"),
    ])?;
    std::fs::create_dir_all(&dir)?;
    let _ = std::fs::remove_file(dir.join("recipe"));
    let apt = Apt::new(&dir.join("apt"))?;
    apt.update()?;

    // The kernel first: a module it lacks fails the build before anything else is fetched.
    let kernel_pkg = apt.kernel_package()?;
    let debs = dir.join("debs");
    apt.download(std::slice::from_ref(&kernel_pkg), &debs)?;
    let kernel_deb = deb_of(&debs, &kernel_pkg)
        .with_context(|| format!("{kernel_pkg}.deb was not downloaded"))?;
    let kernel_version = output(
        Command::new("dpkg-deb")
            .arg("-f")
            .arg(&kernel_deb)
            .arg("Version"),
    )?
    .trim()
    .to_string();
    let kroot = dir.join("kernel-root");
    fresh_dir(&kroot)?;
    extract(&debs, &kernel_pkg, &kroot)?;
    let vmlinuz = first_matching(&kroot.join("boot"), "vmlinuz-")?;
    let tree = ModuleTree::open(&kroot.join("lib/modules"))
        .with_context(|| format!("reading the modules of {kernel_pkg} {kernel_version}"))?;
    let modules = tree.resolve(NIC_MODULES).with_context(|| {
        format!(
            "the NIC modules of {kernel_pkg} {kernel_version} (kernel {})",
            tree.release
        )
    })?;
    let info = ImageInfo {
        kernel_package: kernel_pkg.clone(),
        kernel_version,
        kernel_release: tree.release.clone(),
        modules: modules.iter().map(|(name, _)| name.clone()).collect(),
    };
    eprintln!("xtask: guest kernel: {}", info.summary());

    let mut packages: Vec<String> = BASE_PACKAGES.iter().map(|s| s.to_string()).collect();
    packages.extend(apt.closure("curl")?);
    packages.sort();
    packages.dedup();
    eprintln!("xtask: guest packages: {}", packages.join(" "));
    apt.download(&packages, &debs)?;

    // The initramfs tree.
    let root = dir.join("root");
    fresh_dir(&root)?;
    for p in &packages {
        extract(&debs, p, &root)?;
    }
    prune(&root)?;
    let modules_dir = root.join("lib/modules");
    std::fs::create_dir_all(&modules_dir)?;
    for (name, file) in &modules {
        std::fs::copy(file, modules_dir.join(format!("{name}.ko")))
            .with_context(|| format!("copying {}", file.display()))?;
    }
    write_exec(&root.join("init"), INIT)?;
    std::fs::create_dir_all(root.join("etc"))?;
    write_exec(&root.join("etc/udhcpc.script"), UDHCPC_SCRIPT)?;
    std::fs::write(root.join("etc/profile"), PROFILE)?;
    std::fs::write(root.join("etc/c2w-image.env"), info.to_env())?;
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n")?;
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
    for (path, text, exec) in WWW {
        let file = root.join("srv/www").join(path);
        std::fs::create_dir_all(file.parent().expect("a file below srv/www"))?;
        if *exec {
            write_exec(&file, text)?;
        } else {
            std::fs::write(&file, text)?;
        }
    }
    for d in [
        "proc", "sys", "dev", "tmp", "run", "root", ".wasmenv", "sbin", "usr/sbin",
    ] {
        std::fs::create_dir_all(root.join(d))?;
    }

    let tmp_initrd = dir.join("initrd.img.tmp");
    let script = format!(
        "cd '{}' && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -9 > '{}'",
        root.display(),
        tmp_initrd.display()
    );
    run(Command::new("sh").arg("-c").arg(script))?;
    let image = GuestImage {
        kernel: dir.join("bzImage"),
        initrd: dir.join("initrd.img"),
        info,
    };
    std::fs::copy(&vmlinuz, &image.kernel)?;
    std::fs::rename(&tmp_initrd, &image.initrd)?;
    std::fs::write(
        dir.join("packages.txt"),
        format!("{kernel_pkg}\n{}\n", packages.join("\n")),
    )?;
    std::fs::write(dir.join("image.env"), image.info.to_env())?;
    std::fs::write(dir.join("recipe"), recipe())?;
    let _ = std::fs::remove_dir_all(&kroot);
    Ok(image)
}

fn extract(debs: &Path, package: &str, to: &Path) -> Result<()> {
    let deb = deb_of(debs, package).with_context(|| format!("{package}.deb was not downloaded"))?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(to))
}

/// Drops what the guest never reads: docs, locales, charset converters, other binaries.
fn prune(root: &Path) -> Result<()> {
    for d in [
        "usr/share",
        "usr/lib/i386-linux-gnu/gconv",
        "etc/ld.so.conf.d",
        "usr/libexec",
    ] {
        let p = root.join(d);
        if p.exists() {
            std::fs::remove_dir_all(&p)?;
        }
    }
    // Of the executables only curl is used (busybox provides the rest).
    for d in ["usr/bin", "usr/sbin", "sbin"] {
        let Ok(entries) = std::fs::read_dir(root.join(d)) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name() != "curl" {
                let p = e.path();
                if p.is_dir() && !p.is_symlink() {
                    std::fs::remove_dir_all(&p)?;
                } else {
                    std::fs::remove_file(&p)?;
                }
            }
        }
    }
    if !root.join("bin/busybox").is_file() {
        bail!("busybox-static did not provide /bin/busybox");
    }
    if !root.join("usr/bin/curl").is_file() {
        bail!("curl did not provide /usr/bin/curl");
    }
    Ok(())
}

fn first_matching(dir: &Path, prefix: &str) -> Result<PathBuf> {
    std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .with_context(|| format!("no {prefix}* in {}", dir.display()))
}

fn write_exec(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{HTTPD_PORT, INIT, WWW};

    /// `/init` starts the web server on the port the demo page previews, on the site's root.
    #[test]
    fn init_serves_the_site_on_the_preview_port() {
        let line = INIT
            .lines()
            .find(|l| l.contains("httpd -p"))
            .expect("/init starts busybox httpd");
        assert!(
            line.contains(&format!("httpd -p {HTTPD_PORT} -h /srv/www")),
            "{line}"
        );
    }

    /// Every `href`/`src` in the site's pages is relative (so it stays inside the preview) and
    /// names a file of the site (or its root, `./`).
    #[test]
    fn the_site_links_only_to_its_own_files() {
        let mut seen = 0;
        for (page, text, _) in WWW.iter().filter(|(p, _, _)| p.ends_with(".html")) {
            for attr in ["href=\"", "src=\""] {
                for rest in text.split(attr).skip(1) {
                    let target = &rest[..rest.find('"').expect("a closing quote")];
                    seen += 1;
                    assert!(
                        !target.starts_with('/') && !target.contains("://"),
                        "{page}: {target} would leave the preview"
                    );
                    assert!(
                        target == "./" || WWW.iter().any(|(p, _, _)| *p == target),
                        "{page}: {target} is not a file of the site"
                    );
                }
            }
        }
        assert!(seen >= 6, "only {seen} links found");
    }
}
