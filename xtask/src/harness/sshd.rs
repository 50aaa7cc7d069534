//! [`Sshd`]: OpenSSH's server (Debian's openssh-server) on a free port of 127.0.0.1, for the
//! real-client checks that run ssh and git over ssh in a guest. Everything it reads is made
//! at test time in its scratch directory: its host key and a client key (ed25519, no
//! passphrase), `authorized_keys`, its own `sshd_config` (nothing of the host's
//! `/etc/ssh/sshd_config`), its pid file and log, and a bare git repository to clone. Only
//! key logins as root are allowed; it runs in the foreground (`-D -e`) and is killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use super::daemon::{free_port, Daemon};
use super::origins::make_bare_git_repo;
use crate::tools::{ensure_programs, fresh_dir, output, run};

/// The server binary (sshd wants to be started by its absolute path: it re-executes itself).
const SSHD: &str = "/usr/sbin/sshd";
/// sshd's privilege separation directory, which must exist before it starts.
const PRIVSEP_DIR: &str = "/run/sshd";

/// A running sshd; killed when dropped.
pub struct Sshd {
    daemon: Daemon,
    client_key: PathBuf,
    repo: PathBuf,
    head: String,
}

impl Sshd {
    /// Installs openssh-server and the client if missing, empties `dir` and makes the keys,
    /// the configuration and the git repository in it, and starts sshd on a free port of
    /// 127.0.0.1.
    pub fn start(dir: &Path) -> Result<Self> {
        ensure_programs(&[
            (SSHD, "openssh-server"),
            ("ssh", "openssh-client"),
            ("ssh-keygen", "openssh-client"),
            ("git", "git"),
        ])?;
        let dir = fresh_dir(dir)?;
        let host_key = dir.join("host_key");
        let client_key = dir.join("client_key");
        keygen(&host_key, "xtask sshd host key")?;
        keygen(&client_key, "xtask ssh client")?;
        let authorized = dir.join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized)
            .context("writing authorized_keys")?;
        let repo = make_bare_git_repo(&dir.join("git")).context("making the git repository")?;
        let head = output(
            Command::new("git")
                .arg("--git-dir")
                .arg(&repo)
                .args(["rev-parse", "HEAD"]),
        )?
        .trim()
        .to_string();
        std::fs::create_dir_all(PRIVSEP_DIR)
            .with_context(|| format!("creating sshd's privilege separation dir {PRIVSEP_DIR}"))?;
        let port = free_port()?;
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "# written by cargo xtask for one test run\n\
                 ListenAddress 127.0.0.1:{port}\n\
                 HostKey {host_key}\n\
                 AuthorizedKeysFile {authorized}\n\
                 PidFile {pid}\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\n\
                 PermitUserRC no\n\
                 PrintMotd no\n\
                 PrintLastLog no\n\
                 AllowTcpForwarding no\n\
                 AllowAgentForwarding no\n\
                 X11Forwarding no\n\
                 LogLevel VERBOSE\n",
                host_key = host_key.display(),
                authorized = authorized.display(),
                pid = dir.join("sshd.pid").display(),
            ),
        )?;
        // A configuration sshd refuses is reported here, with its own words.
        let check = Command::new(SSHD)
            .arg("-t")
            .arg("-f")
            .arg(&config)
            .output()?;
        if !check.status.success() {
            anyhow::bail!(
                "sshd -t refused {}: {}",
                config.display(),
                String::from_utf8_lossy(&check.stderr)
            );
        }
        let daemon = Daemon::start(
            "sshd",
            Command::new(SSHD).args(["-D", "-e", "-f"]).arg(&config),
            port,
            &dir.join("sshd.log"),
        )?;
        Ok(Self {
            daemon,
            client_key,
            repo,
            head,
        })
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.daemon.port()
    }

    /// The client's private key, whose public half is the only authorized key.
    pub fn client_key(&self) -> &Path {
        &self.client_key
    }

    /// The bare git repository (absolute path), whose README holds
    /// [`GIT_README`](super::origins::GIT_README).
    pub fn repo(&self) -> &Path {
        &self.repo
    }

    /// The commit the repository's HEAD names.
    pub fn head(&self) -> &str {
        &self.head
    }

    /// Key logins sshd accepted so far (`Accepted publickey` lines of its log).
    pub fn logins(&self) -> usize {
        self.daemon
            .log_text()
            .lines()
            .filter(|l| l.contains("Accepted publickey for root"))
            .count()
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }
}

/// `ssh-keygen -t ed25519 -N ''` to `path` (and `path.pub`).
fn keygen(path: &Path, comment: &str) -> Result<()> {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null()))
    .with_context(|| format!("generating {}", path.display()))
}
