//! A real Linux guest for end-to-end tests: a network namespace whose only interface is the
//! native runner's TAP device. The kernel's stack, udhcpc, ping, curl run inside it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::harness::cleanup::{self, Action};
use crate::tools::{output, run};

/// The guest's fixed MAC address.
pub const GUEST_MAC: &str = "52:54:00:c2:00:03";

/// A network namespace acting as the guest; deleted when dropped.
pub struct GuestNs {
    /// Namespace name.
    pub name: String,
    /// The guest's HOME: programs inside see a clean environment, not the host's.
    home: PathBuf,
    /// Interface name inside it.
    pub iface: String,
    action: Action,
}

impl GuestNs {
    /// Creates the namespace with loopback up, IPv6 off, and its own resolv.conf (so nothing
    /// in it ever touches the host's). Programs run with HOME=`home` and no other variables
    /// than PATH and LANG, like a freshly booted guest.
    pub fn create(name: &str, home: &Path) -> Result<Self> {
        let netns_dir = PathBuf::from("/etc/netns").join(name);
        let action = cleanup::register(Action::DeleteNetns(name.to_string()));
        std::fs::create_dir_all(&netns_dir).context("creating /etc/netns entry")?;
        std::fs::write(
            netns_dir.join("resolv.conf"),
            "# written by cargo xtask for a test namespace\n",
        )?;
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self {
            name: name.to_string(),
            home: home.to_path_buf(),
            iface: String::new(),
            action,
        };
        ns.run(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        ns.run(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])?;
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A guest whose only interface is the TAP device `tap`: `work` is emptied (created if
    /// missing) as its HOME, the namespace `name` created and the TAP moved in and brought up.
    pub fn behind(name: &str, tap: &str, work: &Path) -> Result<Self> {
        crate::tools::fresh_dir(work)?;
        let mut ns = Self::create(name, work)?;
        ns.adopt(tap)
            .context("moving the TAP device into the guest namespace")?;
        Ok(ns)
    }

    /// Moves the host interface `iface` into the namespace, gives it [`GUEST_MAC`] and brings
    /// it up.
    pub fn adopt(&mut self, iface: &str) -> Result<()> {
        run(Command::new("ip").args(["link", "set", iface, "netns", &self.name]))?;
        self.run(&["ip", "link", "set", iface, "address", GUEST_MAC])?;
        self.run(&["ip", "link", "set", iface, "up"])?;
        self.iface = iface.to_string();
        Ok(())
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .args(self.clean_env())
            .args(args);
        cmd
    }

    /// Runs a command inside the namespace and fails if it fails.
    pub fn run(&self, args: &[&str]) -> Result<()> {
        run(self.command(args).stdout(Stdio::null()))
    }

    /// Runs a command inside the namespace with a time limit, capturing its output.
    pub fn output_within(&self, args: &[&str], limit: Duration) -> Result<Output> {
        let mut cmd = Command::new("timeout");
        cmd.arg("--kill-after=2")
            .arg(format!("{}", limit.as_secs_f64()))
            .args(["ip", "netns", "exec", &self.name])
            .args(self.clean_env())
            .args(args);
        cmd.output()
            .with_context(|| format!("running {args:?} in the guest"))
    }

    /// `env -i` with the few variables a guest's shell would have.
    fn clean_env(&self) -> Vec<String> {
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        vec![
            "env".into(),
            "-i".into(),
            format!("PATH={path}"),
            format!("HOME={}", self.home.display()),
            "LANG=C.UTF-8".into(),
            "GIT_CONFIG_NOSYSTEM=1".into(),
            "PIP_CONFIG_FILE=/dev/null".into(),
        ]
    }

    /// udhcpc once on the guest's interface (8 tries, 2 s apart) with Debian's default script,
    /// which applies the address, route, DNS servers and MTU.
    pub fn udhcpc(&self) -> Result<Output> {
        self.output_within(
            &[
                "udhcpc",
                "-i",
                &self.iface,
                "-n",
                "-q",
                "-f",
                "-t",
                "8",
                "-T",
                "2",
                "-s",
                "/etc/udhcpc/default.script",
            ],
            Duration::from_secs(30),
        )
    }

    /// The guest's resolv.conf as its programs see it.
    pub fn resolv_conf(&self) -> String {
        std::fs::read_to_string(Path::new("/etc/netns").join(&self.name).join("resolv.conf"))
            .unwrap_or_default()
    }
}

impl Drop for GuestNs {
    fn drop(&mut self) {
        cleanup::run_one(&self.action);
    }
}

/// The native runner as a child process; killed when dropped.
pub struct Runner {
    child: Child,
    action: Action,
    /// Its stderr log file.
    pub log: PathBuf,
}

impl Runner {
    /// The arguments most test runners start with: trust the origins' test CA `ca`, write the
    /// proxy's CA to `proxy_ca` for the guest's clients, and reach loopback origins only.
    pub fn base_args(ca: &Path, proxy_ca: &Path) -> Vec<String> {
        vec![
            "--trust-ca".into(),
            ca.display().to_string(),
            "--ca-cert-out".into(),
            proxy_ca.display().to_string(),
            "--allow".into(),
            "loopback".into(),
        ]
    }

    /// Starts `binary` on a new TAP device `tap` with `extra` arguments and waits until the
    /// interface exists.
    pub fn start_tap(binary: &Path, tap: &str, extra: &[String], log: PathBuf) -> Result<Self> {
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(binary)
            .args(["--tap", tap, "--log", "info"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let action = cleanup::register(Action::Kill(child.id()));
        let mut runner = Self { child, action, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if Path::new("/sys/class/net").join(tap).exists() {
                return Ok(runner);
            }
            if let Some(status) = runner.child.try_wait()? {
                bail!("the runner exited with {status}: {}", runner.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "the runner did not create {tap} within 10 s: {}",
                    runner.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of the runner's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// The runner's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        cleanup::run_one(&self.action);
        let _ = self.child.wait();
    }
}

/// Builds the runner binary (debug profile, with the `fault` feature for `--fault`) and
/// returns its path.
pub fn build_runner() -> Result<PathBuf> {
    let root = crate::tools::workspace_root();
    run(Command::new("cargo")
        .args([
            "build",
            "--quiet",
            "-p",
            "c2w-net-proxy",
            "--features",
            "fault",
            "--bin",
            "c2w-net-proxy",
        ])
        .current_dir(&root))?;
    // Where cargo put it: `CARGO_TARGET_DIR` when set (as in a worktree sharing the machine).
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let path = target.join("debug/c2w-net-proxy");
    let _ = output(Command::new(&path).arg("--version"))?;
    Ok(path)
}

/// The proxy address the guest's proxy-aware clients use.
pub const PROXY: &str = "http://192.168.127.253:80";

/// What a guest-side check needs: the namespace, the proxy CA the guest trusts, a scratch dir.
pub struct Guest<'a> {
    /// The namespace.
    pub ns: &'a GuestNs,
    /// The proxy's CA certificate (PEM file).
    pub ca: PathBuf,
    /// Scratch directory (the guest's HOME).
    pub work: PathBuf,
}

/// A command's stdout and stderr together, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Fails with `want` and what was got instead.
pub fn expect_contains(got: &str, want: &str) -> Result<()> {
    if got.contains(want) {
        Ok(())
    } else {
        bail!("expected {want:?} in {got:?}")
    }
}

impl Guest<'_> {
    /// Runs `script` with `sh -c` in the guest; stdout on success, an error with all output
    /// otherwise.
    pub fn sh(&self, script: &str, limit: Duration) -> Result<String> {
        let out = self.ns.output_within(&["sh", "-c", script], limit)?;
        if !out.status.success() {
            bail!("`{script}` failed ({}): {}", out.status, text(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// curl through the proxy, trusting the proxy's CA.
    pub fn curl(&self) -> String {
        format!("curl -sS -x {PROXY} --cacert {}", self.ca.display())
    }

    /// udhcpc on the guest's interface: the lease, the default route, the DNS server.
    pub fn dhcp(&self) -> Result<String> {
        let iface = self.ns.iface.clone();
        let out = self.ns.udhcpc()?;
        if !out.status.success() {
            bail!("udhcpc failed: {}", text(&out));
        }
        let addr = text(&self.ns.output_within(
            &["ip", "-4", "-o", "addr", "show", "dev", &iface],
            Duration::from_secs(5),
        )?);
        if !addr.contains("inet 192.168.127.3/24") {
            bail!("unexpected address: {addr}");
        }
        let route = text(&self.ns.output_within(
            &["ip", "-4", "route", "show", "default"],
            Duration::from_secs(5),
        )?);
        if !route.contains("default via 192.168.127.1") {
            bail!("no default route via the gateway: {route}");
        }
        let resolv = self.ns.resolv_conf();
        if !resolv.contains("nameserver 192.168.127.1") {
            bail!("resolv.conf does not name 192.168.127.1: {resolv}");
        }
        Ok("192.168.127.3/24 via 192.168.127.1, nameserver 192.168.127.1".into())
    }

    /// Two pings to `ip`.
    pub fn ping(&self, ip: &str) -> Result<String> {
        let out = self
            .ns
            .output_within(&["ping", "-c", "2", "-W", "3", ip], Duration::from_secs(15))?;
        if !out.status.success() {
            bail!("ping failed: {}", text(&out));
        }
        Ok(text(&out)
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or("")
            .to_string())
    }

    /// A name resolves to one of the proxy's fake IPs.
    pub fn nslookup(&self) -> Result<String> {
        let out = self.ns.output_within(
            &[
                "busybox",
                "nslookup",
                "-type=a",
                "some.name.test",
                "192.168.127.1",
            ],
            Duration::from_secs(15),
        )?;
        let t = text(&out);
        let answer = t
            .lines()
            .skip_while(|l| !l.contains("some.name.test"))
            .find(|l| l.starts_with("Address"));
        match answer {
            Some(line) if out.status.success() && line.contains("198.1") => {
                Ok(line.trim().to_string())
            }
            _ => bail!("no fake-IP answer: {t}"),
        }
    }
}
