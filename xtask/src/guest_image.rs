//! `cargo xtask guest-image`: the demo's Linux guest for v86, built from Debian i386 packages
//! only and cached under `target/guest-image/`: the kernel (`bzImage`) and an initramfs
//! (`initrd.img`, cpio newc + gzip) holding busybox-static, curl with its libraries, the NIC
//! modules and an `/init` that brings the network up through c2w-net-proxy's DHCP server,
//! fetches the proxy's CA certificate to `/.wasmenv/proxy.crt`, exports the proxy variables
//! and starts a shell on the serial console.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::tools::{ensure_programs, output, run, workspace_root};

/// Kernel command line the demo page boots with.
pub const CMDLINE: &str = "console=ttyS0 quiet cryptomgr.notests noisapnp tsc=reliable";

/// Packages besides the kernel whose files go into the initramfs (curl's dependency closure
/// is added by apt-cache).
const BASE_PACKAGES: &[&str] = &["busybox-static", "curl"];

/// NIC modules in load order (the .deb ships no modules.dep): virtio-net, then ne2k-pci.
pub const MODULES: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
    "8390",
    "ne2k-pci",
];

/// What `guest-image` produces.
pub struct GuestImage {
    /// The kernel.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
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
    Ok(())
}

/// Builds the image unless it is cached (or `force`).
pub fn build(force: bool) -> Result<GuestImage> {
    let dir = dir();
    let image = GuestImage {
        kernel: dir.join("bzImage"),
        initrd: dir.join("initrd.img"),
    };
    if !force && image.kernel.is_file() && image.initrd.is_file() {
        eprintln!("xtask: guest image cached in {}", dir.display());
        return Ok(image);
    }
    ensure_programs(&[
        ("apt-get", "apt"),
        ("dpkg-deb", "dpkg"),
        ("cpio", "cpio"),
        ("gzip", "gzip"),
    ])?;
    std::fs::create_dir_all(&dir)?;
    let apt = Apt::new(&dir.join("apt"))?;
    apt.update()?;

    let kernel_pkg = apt.kernel_package()?;
    let mut packages: Vec<String> = BASE_PACKAGES.iter().map(|s| s.to_string()).collect();
    packages.extend(apt.closure("curl")?);
    packages.sort();
    packages.dedup();
    eprintln!("xtask: guest packages: {kernel_pkg} {}", packages.join(" "));

    let debs = dir.join("debs");
    let mut all = packages.clone();
    all.push(kernel_pkg.clone());
    apt.download(&all, &debs)?;

    // The kernel and its modules.
    let kroot = dir.join("kernel-root");
    fresh(&kroot)?;
    extract(&debs, &kernel_pkg, &kroot)?;
    let vmlinuz = first_matching(&kroot.join("boot"), "vmlinuz-")?;

    // The initramfs tree.
    let root = dir.join("root");
    fresh(&root)?;
    for p in &packages {
        extract(&debs, p, &root)?;
    }
    prune(&root)?;
    let modules_dir = root.join("lib/modules");
    std::fs::create_dir_all(&modules_dir)?;
    for m in MODULES {
        let file = find_module(&kroot.join("lib/modules"), m)?;
        std::fs::copy(&file, modules_dir.join(format!("{m}.ko")))
            .with_context(|| format!("copying {}", file.display()))?;
    }
    write_exec(&root.join("init"), INIT)?;
    std::fs::create_dir_all(root.join("etc"))?;
    write_exec(&root.join("etc/udhcpc.script"), UDHCPC_SCRIPT)?;
    std::fs::write(root.join("etc/profile"), PROFILE)?;
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n")?;
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
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
    std::fs::copy(&vmlinuz, &image.kernel)?;
    std::fs::rename(&tmp_initrd, &image.initrd)?;
    std::fs::write(
        dir.join("packages.txt"),
        format!("{kernel_pkg}\n{}\n", packages.join("\n")),
    )?;
    let _ = std::fs::remove_dir_all(&kroot);
    Ok(image)
}

/// apt-get / apt-cache on the i386 package lists, in a directory of their own.
struct Apt {
    opts: Vec<String>,
}

impl Apt {
    fn new(dir: &Path) -> Result<Self> {
        let lists = dir.join("lists");
        let cache = dir.join("cache");
        std::fs::create_dir_all(lists.join("partial"))?;
        std::fs::create_dir_all(cache.join("archives/partial"))?;
        let opts = [
            "APT::Architecture=i386".to_string(),
            "APT::Architectures=i386".to_string(),
            format!("Dir::State::Lists={}", lists.display()),
            format!("Dir::Cache={}", cache.display()),
            "Dir::State::status=/dev/null".to_string(),
            "APT::Sandbox::User=root".to_string(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect();
        Ok(Self { opts })
    }

    fn cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(&self.opts);
        cmd
    }

    /// Fetches the i386 package lists; a failing mirror is tolerated when older lists exist.
    fn update(&self) -> Result<()> {
        let status = self.cmd("apt-get").args(["update", "-qq"]).status()?;
        if !status.success() {
            eprintln!(
                "xtask: warning: apt-get update (i386) reported errors; using the lists it has"
            );
        }
        let out = output(self.cmd("apt-cache").args(["policy", "busybox-static"]))?;
        if !out.contains("Candidate:") || out.contains("Candidate: (none)") {
            bail!("no i386 package lists (apt-get update failed)");
        }
        Ok(())
    }

    /// The i386 kernel package: what `linux-image-686` depends on, preferring `-unsigned`.
    fn kernel_package(&self) -> Result<String> {
        let out = output(self.cmd("apt-cache").args(["depends", "linux-image-686"]))?;
        let dep = out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|d| d.starts_with("linux-image-"))
            .context("linux-image-686 has no linux-image dependency")?
            .trim()
            .to_string();
        let unsigned = format!("{dep}-unsigned");
        let show = self.cmd("apt-cache").args(["show", &unsigned]).output()?;
        Ok(if show.status.success() && !show.stdout.is_empty() {
            unsigned
        } else {
            dep
        })
    }

    /// `package` and every package it needs (Depends and PreDepends, recursively).
    fn closure(&self, package: &str) -> Result<Vec<String>> {
        let out = output(self.cmd("apt-cache").args([
            "depends",
            "--recurse",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
            package,
        ]))?;
        Ok(out
            .lines()
            .filter(|l| !l.starts_with(' ') && !l.starts_with('<'))
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// Downloads the .debs of `packages` into `to` (skipping ones already there).
    fn download(&self, packages: &[String], to: &Path) -> Result<()> {
        std::fs::create_dir_all(to)?;
        let missing: Vec<&String> = packages
            .iter()
            .filter(|p| deb_of(to, p).is_none())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        run(self
            .cmd("apt-get")
            .args(["download", "-qq"])
            .args(&missing)
            .current_dir(to))
    }
}

/// The downloaded .deb of `package` in `dir`.
fn deb_of(dir: &Path, package: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        (name.starts_with(&prefix) && name.ends_with(".deb")).then(|| e.path())
    })
}

fn extract(debs: &Path, package: &str, to: &Path) -> Result<()> {
    let deb = deb_of(debs, package).with_context(|| format!("{package}.deb was not downloaded"))?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(to))
}

fn fresh(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    Ok(())
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

/// Finds `<name>.ko` under the kernel's module tree.
fn find_module(dir: &Path, name: &str) -> Result<PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    let want = format!("{name}.ko");
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == want.as_str()) {
                return Ok(p);
            }
        }
    }
    bail!("module {want} not found in the kernel package (compressed modules are not supported)")
}

fn write_exec(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The guest's `/init`.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
exec </dev/console >/dev/console 2>&1
echo "c2w-demo: init after $(cut -d' ' -f1 /proc/uptime) s"
for m in virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net 8390 ne2k-pci; do
  insmod /lib/modules/$m.ko 2>/dev/null
done
hostname c2w-demo
ip link set lo up
IF=
for i in 1 2 3 4 5 6 7 8 9 10; do
  IF=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
  [ -n "$IF" ] && break
  sleep 0.2
done
if [ -z "$IF" ]; then
  echo "c2w-demo: no network interface (NIC module did not load)"
else
  ip link set "$IF" up
  if udhcpc -i "$IF" -s /etc/udhcpc.script -n -q -t 10 -T 2 >/tmp/udhcpc.log 2>&1; then
    . /run/lease
    echo "c2w-demo: lease $IP/$MASK on $IF via $ROUTER dns $DNS after $(cut -d' ' -f1 /proc/uptime) s"
  else
    echo "c2w-demo: DHCP failed on $IF:"; cat /tmp/udhcpc.log
  fi
  # The CA of the proxy's TLS interception: the proxy serves it on its own address.
  if curl -sS --fail --noproxy '*' -m 10 -o /.wasmenv/proxy.crt.tmp http://192.168.127.253/ca.pem; then
    mv /.wasmenv/proxy.crt.tmp /.wasmenv/proxy.crt
    echo "c2w-demo: CA certificate saved to /.wasmenv/proxy.crt"
  else
    echo "c2w-demo: could not fetch the proxy's CA certificate; HTTPS will fail"
  fi
fi
. /etc/profile
echo "c2w-demo: shell ready after $(cut -d' ' -f1 /proc/uptime) s (try: curl https://example.org/)"
while true; do
  setsid cttyhack sh -l
done
"#;

/// busybox udhcpc's event script: address, route, resolv.conf, and /run/lease for /init.
const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  deconfig)
    ip addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip route add default via "$r" dev "$interface"; break; done
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    echo "IP=$ip MASK=${mask:-24} ROUTER='$router' DNS='$dns'" > /run/lease
    ;;
esac
exit 0
"#;

/// Environment of every shell: the proxy and the CA, as container2wasm sets them.
const PROFILE: &str = r#"export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root
export http_proxy=http://192.168.127.253:80
export https_proxy=http://192.168.127.253:80
export HTTP_PROXY=http://192.168.127.253:80
export HTTPS_PROXY=http://192.168.127.253:80
export SSL_CERT_FILE=/.wasmenv/proxy.crt
export PS1='c2w-demo:\w# '
cd /root
"#;
