//! The files behind the origins: a test CA and the HTTPS origin's certificate (made by
//! openssl), a pure-Python wheel for the pip index, and a git repository for
//! `git http-backend` (and its bare clone for sshd, [`make_bare_git_repo`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Result;

use crate::tools::run;

/// Content of the file in the test git repository.
pub const GIT_README: &str = "cloned through c2w-net-proxy\n";
/// The test wheel's project name and version.
pub const WHEEL_PROJECT: &str = "c2w-probe";

/// Files the origins serve and the test CA of the HTTPS origin.
#[derive(Debug, Clone)]
pub struct OriginFiles {
    /// Directory holding everything.
    pub dir: PathBuf,
    /// The test CA certificate (PEM) that signed the HTTPS origin's certificate.
    pub ca_cert: PathBuf,
    pub(super) server_cert: PathBuf,
    pub(super) server_key: PathBuf,
}

impl OriginFiles {
    /// Creates the test CA, the origin's certificate (for 127.0.0.1 and localhost), a wheel
    /// and a git repository under `dir`.
    pub fn create(dir: &Path) -> Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        let p = |name: &str| dir.join(name);
        let quiet = |cmd: &mut Command| run(cmd.stdout(Stdio::null()).stderr(Stdio::null()));
        quiet(
            Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-days",
                    "2",
                ])
                .args(["-subj", "/CN=xtask origin test CA"])
                .args([
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ])
                .arg("-keyout")
                .arg(p("ca.key"))
                .arg("-out")
                .arg(p("ca.pem")),
        )?;
        quiet(
            Command::new("openssl")
                .args([
                    "req",
                    "-new",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-subj",
                    "/CN=127.0.0.1",
                ])
                .arg("-keyout")
                .arg(p("server.key"))
                .arg("-out")
                .arg(p("server.csr")),
        )?;
        std::fs::write(
            p("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )?;
        quiet(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2"])
                .arg("-in")
                .arg(p("server.csr"))
                .arg("-CA")
                .arg(p("ca.pem"))
                .arg("-CAkey")
                .arg(p("ca.key"))
                .arg("-CAcreateserial")
                .arg("-out")
                .arg(p("server.pem"))
                .arg("-extfile")
                .arg(p("server.ext")),
        )?;
        make_wheel(dir)?;
        make_git_repo(&dir.join("git"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            ca_cert: p("ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
        })
    }

    /// The HTTPS origin's certificate (PEM), e.g. to pin its key in a browser.
    pub fn server_cert(&self) -> &Path {
        &self.server_cert
    }
}

pub(super) fn wheel_name() -> String {
    format!("{}-1.0-py3-none-any.whl", WHEEL_PROJECT.replace('-', "_"))
}

/// Writes a minimal, valid pure-Python wheel (with a RECORD of sha256 digests).
fn make_wheel(dir: &Path) -> Result<()> {
    let script = r#"
import base64, hashlib, sys, zipfile
path = sys.argv[1]
files = {
    "c2w_probe/__init__.py": b"VALUE = 'installed through c2w-net-proxy'\n",
    "c2w_probe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: c2w-probe\nVersion: 1.0\n",
    "c2w_probe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: xtask\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = ""
for name, data in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record += f"{name},sha256={digest},{len(data)}\n"
record += "c2w_probe-1.0.dist-info/RECORD,,\n"
files["c2w_probe-1.0.dist-info/RECORD"] = record.encode()
with zipfile.ZipFile(path, "w") as z:
    for name, data in files.items():
        z.writestr(name, data)
"#;
    run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir.join(wheel_name())))
}

/// A git repository with one commit holding README.
pub(super) fn make_git_repo(dir: &Path) -> Result<()> {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo)?;
    let git = |args: &[&str]| {
        run(Command::new("git")
            .args(args)
            .current_dir(&repo)
            .stdout(Stdio::null())
            .stderr(Stdio::null()))
    };
    git(&["init", "-q", "-b", "main"])?;
    std::fs::write(repo.join("README"), GIT_README)?;
    git(&["add", "README"])?;
    git(&[
        "-c",
        "user.name=xtask",
        "-c",
        "user.email=xtask@localhost",
        "commit",
        "-q",
        "-m",
        "test repository",
    ])?;
    git(&["config", "http.receivepack", "false"])?;
    Ok(())
}

/// The repository of [`make_git_repo`] (README holding [`GIT_README`]) cloned bare to
/// `dir/repo.git`, for servers that serve bare repositories (sshd's `git-upload-pack`);
/// returns the bare repository's path. `dir/repo` holds the work tree it was cloned from.
pub fn make_bare_git_repo(dir: &Path) -> Result<PathBuf> {
    make_git_repo(dir)?;
    let bare = dir.join("repo.git");
    run(Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(dir.join("repo"))
        .arg(&bare)
        .stdout(Stdio::null())
        .stderr(Stdio::null()))?;
    Ok(bare)
}
