//! apt-get and apt-cache on Debian's i386 package lists, kept in a directory of the image's
//! own so the host's apt state is never touched.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::tools::{output, run};

/// apt-get / apt-cache on the i386 package lists, in a directory of their own.
pub struct Apt {
    opts: Vec<String>,
}

impl Apt {
    pub fn new(dir: &Path) -> Result<Self> {
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
    pub fn update(&self) -> Result<()> {
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
    pub fn kernel_package(&self) -> Result<String> {
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
    pub fn closure(&self, package: &str) -> Result<Vec<String>> {
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
    pub fn download(&self, packages: &[String], to: &Path) -> Result<()> {
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
pub fn deb_of(dir: &Path, package: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        (name.starts_with(&prefix) && name.ends_with(".deb")).then(|| e.path())
    })
}
