//! Cleanup that runs however a task ends: on success, on error (Drop), and on Ctrl-C/SIGTERM
//! (the handler runs every registered action, then exits). Actions are idempotent commands.

use std::process::{Command, Stdio};
use std::sync::{Mutex, Once};

/// One cleanup step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Kill a process (SIGTERM, then SIGKILL).
    Kill(u32),
    /// Kill a process group (SIGKILL): a server that forks workers.
    KillGroup(u32),
    /// Delete a network namespace (and its `/etc/netns` directory).
    DeleteNetns(String),
}

static ACTIONS: Mutex<Vec<Action>> = Mutex::new(Vec::new());
static HANDLER: Once = Once::new();

/// Registers `action` to run at exit or interruption; returns it for [`run_one`].
pub fn register(action: Action) -> Action {
    HANDLER.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            eprintln!("xtask: interrupted; cleaning up");
            run_all();
            std::process::exit(130);
        });
    });
    ACTIONS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(action.clone());
    action
}

/// Runs one registered action now and forgets it.
pub fn run_one(action: &Action) {
    execute(action);
    ACTIONS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|a| a != action);
}

/// Runs every registered action, most recent first.
pub fn run_all() {
    let actions: Vec<Action> =
        std::mem::take(&mut *ACTIONS.lock().unwrap_or_else(|e| e.into_inner()));
    for action in actions.iter().rev() {
        execute(action);
    }
}

fn quiet(cmd: &mut Command) {
    let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
}

fn execute(action: &Action) {
    match action {
        Action::Kill(pid) => {
            let pid = pid.to_string();
            quiet(Command::new("kill").args(["-TERM", &pid]));
            for _ in 0..20 {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            quiet(Command::new("kill").args(["-KILL", &pid]));
        }
        Action::KillGroup(pgid) => {
            quiet(Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]));
        }
        Action::DeleteNetns(name) => {
            // Kill whatever still runs inside, then delete it.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    quiet(Command::new("kill").args(["-KILL", pid]));
                }
            }
            quiet(Command::new("ip").args(["netns", "del", name]));
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{name}"));
        }
    }
}

/// Runs all registered actions when dropped (error paths and panics included).
pub struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        run_all();
    }
}
