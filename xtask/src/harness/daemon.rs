//! [`Daemon`]: a server program (sshd, python's http.server) run as a child process for a
//! test: in its own process group (the workers it forks go with it), its output in a log
//! file, ready once its port accepts connections, and killed however the test ends (on drop,
//! and through [`cleanup`] on an error or Ctrl-C).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::cleanup::{self, Action};

/// How long a daemon may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running server process; its process group is killed when dropped.
pub struct Daemon {
    name: String,
    addr: SocketAddr,
    child: Child,
    cleanup: Action,
    log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` (named `name` in messages) with stdout and stderr appended to `log`, and
    /// waits until 127.0.0.1:`port` accepts a connection; fails with the log's tail if the
    /// process exits first or does not listen within 20 s.
    pub fn start(name: &str, cmd: &mut Command, port: u16, log: &Path) -> Result<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let cleanup = cleanup::register(Action::KillGroup(child.id()));
        let mut daemon = Self {
            name: name.to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            cleanup,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&daemon.addr, Duration::from_millis(200)).is_ok() {
                return Ok(daemon);
            }
            if let Some(status) = daemon.child.try_wait()? {
                bail!(
                    "{name} exited with {status} before listening:\n{}",
                    daemon.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} did not listen on {} within {START_TIMEOUT:?}:\n{}",
                    daemon.addr,
                    daemon.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The log's whole text (empty if unreadable).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last 30 lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "{} log ({}):\n{}",
            self.name,
            self.log.display(),
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        cleanup::run_one(&self.cleanup);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
