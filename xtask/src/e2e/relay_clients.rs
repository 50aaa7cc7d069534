//! Real clients through the relay, for the relay phase ([`super::relay`]): programs a user
//! runs in a guest, talking to real servers on the host's loopback that only the relay can
//! reach (the runner maps each name below to 127.0.0.1 with `--relay-host`):
//! - [`git_over_ssh`]: `git clone ssh://…` with OpenSSH's client against OpenSSH's server
//!   ([`Sshd`]), key login, the clone checked commit and file;
//! - [`apt_update_and_download`]: `apt-get update` and `apt-get download` from a Debian
//!   repository served by Python's http.server ([`AptRepo`]), with all of apt's state in
//!   scratch folders, the `.deb` checked by sha256;
//! - [`tcp_echo_round_trip`]: 1 MiB through a host-side TCP echo server ([`TcpEcho`]) with a
//!   half-close, checked by sha256.
//!
//! Each check takes the guest, the server and the name the guest uses for it, and returns a
//! one-line summary like the other relay checks. Tools run in the guest share the host's
//! files, so each keeps its state under the guest's scratch directory: HOME, ssh's
//! configuration and known hosts, apt's lists, caches, configuration and downloads. The
//! checks fail if the host's `~/.ssh` or apt state shows a trace of them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};

use crate::harness::apt_repo::{AptRepo, APT_PACKAGE};
use crate::harness::guest::Guest;
use crate::harness::origins::{blob, sha256_hex, TcpEcho, GIT_README};
use crate::harness::sshd::Sshd;
use crate::tools::fresh_dir;

/// The name the guest uses for the host's sshd.
pub const SSH_NAME: &str = "ssh.test";
/// The name the guest uses for the host's apt repository.
pub const REPO_NAME: &str = "repo.test";
/// The name the guest uses for the host's TCP echo server.
pub const ECHO_NAME: &str = "echo.test";

/// The servers of these checks, on the host's loopback; all stopped when dropped.
pub struct ClientServers {
    /// OpenSSH's server with a bare git repository.
    pub sshd: Sshd,
    /// The Debian repository and its HTTP server.
    pub apt: AptRepo,
    /// The TCP echo server.
    pub echo: TcpEcho,
}

impl ClientServers {
    /// Starts sshd in `dir/sshd`, the apt repository in `dir/apt` and the echo server.
    pub fn start(dir: &Path) -> Result<Self> {
        Ok(Self {
            sshd: Sshd::start(&dir.join("sshd")).context("starting sshd")?,
            apt: AptRepo::start(&dir.join("apt")).context("starting the apt repository")?,
            echo: TcpEcho::start().context("starting the TCP echo server")?,
        })
    }
}

/// What can be seen of a path: absent, or its length and modification time.
fn trace(path: &Path) -> Option<(u64, Option<SystemTime>)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.len(), m.modified().ok()))
}

/// `git clone ssh://root@NAME:PORT/…/repo.git` in the guest with OpenSSH's client: HOME in
/// scratch, no configuration file (`-F /dev/null`: ssh would otherwise read and create
/// `~/.ssh` of the passwd entry, which is the host's), the test key only, host key accepted
/// and remembered nowhere. The clone must hold the repository's HEAD and README.
pub fn git_over_ssh(guest: &Guest, sshd: &Sshd, name: &str) -> Result<String> {
    let scratch = fresh_dir(&guest.work.join("git-ssh"))?;
    let home = scratch.join("home");
    std::fs::create_dir_all(&home)?;
    let clone = scratch.join("clone");
    // ssh finds ~ through the passwd entry, not HOME: that is where a slip would show.
    let host_ssh = PathBuf::from("/root/.ssh");
    let before = (trace(&host_ssh), trace(&host_ssh.join("known_hosts")));
    let logins = sshd.logins();
    let ssh = format!(
        "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no \
         -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=20 -o LogLevel=ERROR",
        sshd.client_key().display()
    );
    let url = format!("ssh://root@{name}:{}{}", sshd.port(), sshd.repo().display());
    let started = Instant::now();
    let out = guest
        .sh(
            &format!(
                "cd {scratch} && HOME={home} GIT_SSH_COMMAND='{ssh}' git clone -q {url} {clone} 2>&1 && \
                 git -C {clone} rev-parse HEAD",
                scratch = scratch.display(),
                home = home.display(),
                clone = clone.display(),
            ),
            Duration::from_secs(90),
        )
        .with_context(|| sshd.log_tail())?;
    let secs = started.elapsed().as_secs_f64();
    let head = out.lines().last().unwrap_or("").trim();
    if head != sshd.head() {
        bail!(
            "the clone's HEAD is {head:?}, the repository's {}: {out}",
            sshd.head()
        );
    }
    let readme = std::fs::read_to_string(clone.join("README")).context("reading the clone")?;
    if readme != GIT_README {
        bail!("README holds {readme:?}, want {GIT_README:?}");
    }
    let accepted = sshd.logins() - logins;
    if accepted == 0 {
        bail!("sshd logged no key login: {}", sshd.log_tail());
    }
    let after = (trace(&host_ssh), trace(&host_ssh.join("known_hosts")));
    if after != before {
        bail!("{} changed during the clone", host_ssh.display());
    }
    Ok(format!(
        "cloned {} over ssh in {secs:.1} s, README ok; sshd accepted {accepted} key login(s)",
        &head[..head.len().min(12)]
    ))
}

/// apt's configuration with every state in `scratch`: read through `APT_CONFIG` before
/// anything else, it points the configuration parts at an empty folder so that none of the
/// host's `/etc/apt/apt.conf.d` is read (it may hold hooks such as
/// `APT::Update::Post-Invoke` that act on the host's own caches); the lists, caches, logs,
/// sources and preferences all live in `scratch`, locking is off (no lock on the host's
/// dpkg or lists) and the download methods run as root (no `_apt` user needed).
fn apt_config(scratch: &Path) -> String {
    let s = scratch.display();
    format!(
        "Dir::Etc \"{s}/etc\";\n\
         Dir::Etc::Main \"/dev/null\";\n\
         Dir::Etc::Parts \"{s}/etc/apt.conf.d\";\n\
         Dir::Etc::SourceList \"{s}/etc/sources.list\";\n\
         Dir::Etc::SourceParts \"{s}/etc/sources.list.d\";\n\
         Dir::Etc::Preferences \"/dev/null\";\n\
         Dir::Etc::PreferencesParts \"{s}/etc/preferences.d\";\n\
         Dir::Etc::Trusted \"{s}/etc/trusted.gpg\";\n\
         Dir::Etc::TrustedParts \"{s}/etc/trusted.gpg.d\";\n\
         Dir::State \"{s}/state\";\n\
         Dir::State::status \"{s}/state/status\";\n\
         Dir::Cache \"{s}/cache\";\n\
         Dir::Log \"{s}/log\";\n\
         Debug::NoLocking \"true\";\n\
         APT::Sandbox::User \"root\";\n\
         Acquire::Languages \"none\";\n\
         Acquire::Retries \"0\";\n\
         Acquire::http::Timeout \"30\";\n"
    )
}

/// Entries of the host's apt state whose names mention `needles` (none may).
fn host_apt_traces(needles: &[&str]) -> Vec<String> {
    let dirs = [
        "/var/lib/apt/lists",
        "/var/lib/apt/lists/partial",
        "/var/cache/apt",
        "/var/cache/apt/archives",
        "/var/cache/apt/archives/partial",
        "/etc/apt/sources.list.d",
    ];
    dirs.iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .flatten()
        .map(|e| e.path().display().to_string())
        .filter(|p| needles.iter().any(|n| p.contains(n)))
        .collect()
}

/// `apt-get update` then `apt-get download c2w-probe` in the guest from
/// `deb [trusted=yes] http://NAME:PORT/ ./`, every state of apt in scratch (see
/// [`apt_config`]): the configuration apt sees must be the scratch one, the update must give
/// no warning or error, the `.deb` must match the one built by sha256, the server must have
/// served it, and the host's apt state must show no trace of the repository.
pub fn apt_update_and_download(guest: &Guest, repo: &AptRepo, name: &str) -> Result<String> {
    let scratch = fresh_dir(&guest.work.join("apt"))?;
    for dir in [
        "etc/apt.conf.d",
        "etc/sources.list.d",
        "etc/preferences.d",
        "etc/trusted.gpg.d",
        "state/lists/partial",
        "cache/archives/partial",
        "log",
        "download",
    ] {
        std::fs::create_dir_all(scratch.join(dir))?;
    }
    std::fs::write(scratch.join("state/status"), "")?;
    std::fs::write(
        scratch.join("etc/sources.list"),
        format!("{}\n", repo.source_line(name)),
    )?;
    let config = scratch.join("apt.conf");
    std::fs::write(&config, apt_config(&scratch))?;
    let apt = |args: &str, limit: u64| {
        guest.sh(
            &format!(
                "cd {}/download && APT_CONFIG={} {args} 2>&1",
                scratch.display(),
                config.display()
            ),
            Duration::from_secs(limit),
        )
    };
    let needle = format!("{name}:{}", repo.port());
    let traces_before = host_apt_traces(&[&needle, APT_PACKAGE]);

    // The configuration apt runs with: the scratch folders, none of the host's parts.
    let dump = apt("apt-config dump", 20)?;
    let parts = format!("Dir::Etc::parts \"{}/etc/apt.conf.d\"", scratch.display());
    if !dump.contains(&parts) || dump.contains("Post-Invoke") {
        bail!("apt does not run with the scratch configuration only:\n{dump}");
    }

    let requests = repo.requests().len();
    let started = Instant::now();
    let update = apt("apt-get -q update", 90).with_context(|| repo.log_tail())?;
    let complaints: Vec<&str> = update
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:") || l.starts_with("Err:"))
        .collect();
    if !complaints.is_empty() {
        bail!("apt-get update complained:\n{update}");
    }
    let list = scratch
        .join("state/lists")
        .join(format!("{needle}_._Packages"));
    let index = std::fs::read_to_string(&list)
        .with_context(|| format!("no index at {} after the update:\n{update}", list.display()))?;
    if !index.contains(&format!("Package: {APT_PACKAGE}\n")) {
        bail!("the index does not list {APT_PACKAGE}: {index}");
    }
    apt(&format!("apt-get -q download {APT_PACKAGE}"), 60).with_context(|| repo.log_tail())?;
    let secs = started.elapsed().as_secs_f64();
    let deb = scratch.join("download").join(repo.deb_name());
    let bytes = std::fs::read(&deb).with_context(|| format!("reading {}", deb.display()))?;
    let sha = sha256_hex(&bytes);
    if sha != repo.deb_sha256() {
        bail!(
            "{} has sha256 {sha}, the package built {}",
            deb.display(),
            repo.deb_sha256()
        );
    }
    let served: Vec<String> = repo.requests().into_iter().skip(requests).collect();
    let want = format!("GET /./{} HTTP/1.1 200", repo.deb_name());
    if !served.iter().any(|r| r.starts_with(&want)) {
        bail!("the server did not serve the package; it logged {served:?}");
    }
    let traces = host_apt_traces(&[&needle, APT_PACKAGE]);
    if traces != traces_before {
        bail!("the host's apt state shows the repository: {traces:?}");
    }
    Ok(format!(
        "update and download in {secs:.1} s: {} ({} B) sha256 ok; {} requests served; \
         host apt state untouched",
        repo.deb_name(),
        bytes.len(),
        served.len()
    ))
}

/// Sends `len` bytes from the guest with Python's socket module to the echo server at
/// `name:PORT` (a thread sends and then half-closes, the main thread reads everything back)
/// and compares the sha256 of what came back with what was sent.
pub fn tcp_echo_round_trip(
    guest: &Guest,
    echo: &TcpEcho,
    name: &str,
    len: usize,
) -> Result<String> {
    let scratch = fresh_dir(&guest.work.join("tcp-echo"))?;
    let payload = scratch.join("payload.bin");
    let data = blob(len);
    std::fs::write(&payload, &data)?;
    let script = scratch.join("echo.py");
    std::fs::write(
        &script,
        "import hashlib, socket, sys, threading\n\
         host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]\n\
         data = open(path, 'rb').read()\n\
         s = socket.create_connection((host, port), timeout=30)\n\
         errors = []\n\
         def send():\n\
         \x20   try:\n\
         \x20       s.sendall(data)\n\
         \x20       s.shutdown(socket.SHUT_WR)\n\
         \x20   except OSError as e:\n\
         \x20       errors.append(e)\n\
         sender = threading.Thread(target=send)\n\
         sender.start()\n\
         digest, got = hashlib.sha256(), 0\n\
         while True:\n\
         \x20   chunk = s.recv(65536)\n\
         \x20   if not chunk:\n\
         \x20       break\n\
         \x20   digest.update(chunk)\n\
         \x20   got += len(chunk)\n\
         sender.join()\n\
         if errors:\n\
         \x20   sys.exit('sending failed: %r' % errors)\n\
         print(got, digest.hexdigest())\n",
    )?;
    let (echoed, accepted) = (echo.echoed(), echo.accepted());
    let started = Instant::now();
    let out = guest.sh(
        &format!(
            "python3 {} {name} {} {}",
            script.display(),
            echo.port(),
            payload.display()
        ),
        Duration::from_secs(60),
    )?;
    let secs = started.elapsed().as_secs_f64();
    let want = format!("{len} {}", sha256_hex(&data));
    if out.trim() != want {
        bail!("the guest read back {:?}, want {want:?}", out.trim());
    }
    // The server counts a chunk once its write returned, which may be just after the guest
    // read it.
    let deadline = Instant::now() + Duration::from_secs(2);
    while echo.echoed() - echoed < len as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let at_server = echo.echoed() - echoed;
    if at_server != len as u64 {
        bail!("the echo server sent back {at_server} bytes, want {len}");
    }
    let connections = echo.accepted() - accepted;
    if connections != 1 {
        bail!("the echo server accepted {connections} connections, want 1");
    }
    Ok(format!(
        "{len} bytes sent and read back over one connection, sha256 ok; EOF {secs:.1} s after \
         the start"
    ))
}
