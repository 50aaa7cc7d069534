//! `cargo xtask fixtures`: captures real client traffic (udhcpc, the Linux kernel's ARP, ICMP
//! and TCP, busybox nslookup, curl) with tcpdump between two network namespaces created here,
//! and stores it as pcap files under `net-stack/tests/fixtures/` for net-stack's replay tests.
//!
//! Layout: namespace `c2wfx-srv` holds 192.168.127.1 and 192.168.127.253 with the gateway MAC
//! 5a:94:ef:e4:0c:dd and runs busybox `udhcpd`, a tiny python3 DNS responder on .1:53 and
//! `python3 -m http.server` on .253:80; namespace `c2wfx-gst` (IPv6 off, MAC 02:00:00:00:00:01)
//! is the guest, joined by a veth pair. Everything is torn down on every exit path (error or
//! panic) by `Lab`'s `Drop`; nothing outside these namespaces is touched: the namespaces'
//! resolv.conf files exist under /etc/netns/ before any command runs there, so `ip netns exec`
//! bind-mounts them over /etc/resolv.conf, and they are removed afterwards.
//!
//! Only std and anyhow are used; tools are run with `std::process::Command`.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const SRV: &str = "c2wfx-srv";
const GST: &str = "c2wfx-gst";
const VETH_SRV: &str = "c2wfx-s";
const VETH_GST: &str = "c2wfx-g";
const GATEWAY_MAC: &str = "5a:94:ef:e4:0c:dd";
/// The guest MAC the replay tests filter on.
const GUEST_MAC: &str = "02:00:00:00:00:01";

/// (program, Debian package) pairs the capture needs.
const TOOLS: &[(&str, &str)] = &[
    ("busybox", "busybox"),
    ("udhcpc", "udhcpc"),
    ("tcpdump", "tcpdump"),
    ("ip", "iproute2"),
    ("curl", "curl"),
    ("python3", "python3"),
    ("ping", "iputils-ping"),
    ("timeout", "coreutils"),
    ("ethtool", "ethtool"),
];

const USAGE: &str = "usage: cargo xtask fixtures [--out DIR]

Re-captures net-stack/tests/fixtures/{dhcp,arp,icmp,dns,tcp_http}.pcap from real clients in
two network namespaces (needs root; installs missing Debian packages with apt-get).";

/// Entry point: `cargo xtask fixtures [--out DIR]`.
pub fn run(args: &[String]) -> Result<()> {
    let mut out = workspace_root().join("net-stack/tests/fixtures");
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--out" => out = PathBuf::from(it.next().context("--out needs a directory")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument `{other}`\n\n{USAGE}"),
        }
    }
    if !is_root() {
        bail!("fixtures needs root (network namespaces, tcpdump); run it as root");
    }
    ensure_tools()?;
    if !Path::new("/etc/udhcpc/default.script").exists() {
        bail!("/etc/udhcpc/default.script is missing (Debian package udhcpc)");
    }
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;

    let mut lab = Lab::create()?;
    lab.start_servers()?;
    let captured = lab.capture_all()?;
    for (name, path) in &captured {
        let dest = out.join(format!("{name}.pcap"));
        fs::copy(path, &dest).with_context(|| format!("copying to {}", dest.display()))?;
        println!(
            "xtask: fixtures: {} ({} bytes)",
            dest.display(),
            fs::metadata(&dest)?.len()
        );
    }
    drop(lab);
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

fn ensure_tools() -> Result<()> {
    let mut missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(program, _)| !on_path(program))
        .map(|(_, package)| *package)
        .collect();
    if !Path::new("/etc/udhcpc/default.script").exists() && !missing.contains(&"udhcpc") {
        missing.push("udhcpc");
    }
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    exec(Command::new("apt-get").arg("update"))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Runs a command to completion, failing with its output when it fails.
fn exec(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `ip netns exec NS program args...`
fn in_ns(ns: &str, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]).args(args);
    cmd
}

/// The two namespaces, their processes and files; `Drop` removes all of it.
struct Lab {
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl Lab {
    fn create() -> Result<Lab> {
        // Leftovers of an interrupted run.
        teardown_namespaces();
        let dir = std::env::temp_dir().join(format!("c2w-fixtures-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("www"))?;
        let lab = Lab {
            dir,
            children: Vec::new(),
        };
        // resolv.conf for each namespace first, so `ip netns exec` never lets a tool write the host's.
        for ns in [SRV, GST] {
            let etc = Path::new("/etc/netns").join(ns);
            fs::create_dir_all(&etc)?;
            fs::write(etc.join("resolv.conf"), "nameserver 192.168.127.1\n")?;
        }
        for ns in [SRV, GST] {
            exec(Command::new("ip").args(["netns", "add", ns]))?;
        }
        // Both ends are born inside their namespaces: the host never sees the link.
        exec(Command::new("ip").args([
            "link", "add", VETH_SRV, "netns", SRV, "type", "veth", "peer", "name", VETH_GST,
            "netns", GST,
        ]))?;
        for (ns, dev, mac) in [(SRV, VETH_SRV, GATEWAY_MAC), (GST, VETH_GST, GUEST_MAC)] {
            for key in ["all", "default", dev] {
                exec(&mut in_ns(
                    ns,
                    "sysctl",
                    &["-q", "-w", &format!("net.ipv6.conf.{key}.disable_ipv6=1")],
                ))?;
            }
            exec(&mut in_ns(ns, "ip", &["link", "set", dev, "address", mac]))?;
            exec(&mut in_ns(ns, "ip", &["link", "set", "lo", "up"]))?;
            // veth leaves TCP/UDP checksums to "hardware" that never fills them in; a guest
            // behind a real NIC or TAP sends complete ones, and the replay checks them.
            exec(&mut in_ns(ns, "ethtool", &["-K", dev, "tx", "off"]))?;
        }
        for addr in ["192.168.127.1/24", "192.168.127.253/24"] {
            exec(&mut in_ns(
                SRV,
                "ip",
                &["addr", "add", addr, "dev", VETH_SRV],
            ))?;
        }
        exec(&mut in_ns(SRV, "ip", &["link", "set", VETH_SRV, "up"]))?;
        exec(&mut in_ns(GST, "ip", &["link", "set", VETH_GST, "up"]))?;
        Ok(lab)
    }

    /// Starts a background process; its output goes to `<dir>/<name>.log` for error messages.
    fn spawn(&mut self, name: &str, mut cmd: Command) -> Result<()> {
        let log = fs::File::create(self.log_path(name))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.log", name.replace(' ', "_")))
    }

    /// udhcpd, the DNS responder and the HTTP server in the server namespace.
    fn start_servers(&mut self) -> Result<()> {
        let leases = self.dir.join("udhcpd.leases");
        fs::write(&leases, "")?;
        let conf = self.dir.join("udhcpd.conf");
        // A one-address pool: busybox udhcpd picks addresses by a hash of the MAC, while
        // net-stack (like the original) hands out the pool's first address, .3; the captured
        // REQUEST must name the address net-stack offers for the replay to reach an ACK.
        fs::write(
            &conf,
            format!(
                "start 192.168.127.3\nend 192.168.127.3\ninterface {VETH_SRV}\n\
                 lease_file {}\npidfile {}\nmax_leases 1\n\
                 opt subnet 255.255.255.0\nopt router 192.168.127.1\nopt dns 192.168.127.1\n\
                 opt lease 3600\nopt mtu 1500\nopt broadcast 192.168.127.255\n",
                leases.display(),
                self.dir.join("udhcpd.pid").display()
            ),
        )?;
        let conf = conf.to_string_lossy().into_owned();
        // `-a 100`: udhcpd ARP-pings an address before offering it; its default 2 s wait races
        // udhcpc's DISCOVER retransmission and makes the capture vary between runs.
        self.spawn(
            "udhcpd",
            in_ns(SRV, "busybox", &["udhcpd", "-f", "-a", "100", &conf]),
        )?;

        let dns = self.dir.join("dns.py");
        fs::write(&dns, DNS_RESPONDER)?;
        let dns = dns.to_string_lossy().into_owned();
        self.spawn("dns responder", in_ns(SRV, "python3", &[&dns]))?;

        fs::write(
            self.dir.join("www/index.html"),
            "<html><body>c2w fixture</body></html>\n",
        )?;
        let www = self.dir.join("www").to_string_lossy().into_owned();
        self.spawn(
            "http.server",
            in_ns(
                SRV,
                "python3",
                &[
                    "-m",
                    "http.server",
                    "80",
                    "--bind",
                    "192.168.127.253",
                    "--directory",
                    &www,
                ],
            ),
        )?;
        // Wait until both python servers are bound.
        let probe = "import socket,sys\n\
            s=socket.create_connection(('192.168.127.253',80),1)\n\
            u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
            u.settimeout(1)\n\
            u.sendto(bytes.fromhex('000101000001000000000000017800000100 01'.replace(' ','')),('192.168.127.1',53))\n\
            u.recvfrom(512)\n";
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ok = in_ns(SRV, "python3", &["-c", probe])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            for (name, child) in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    let log = fs::read_to_string(
                        self.dir.join(format!("{}.log", name.replace(' ', "_"))),
                    )
                    .unwrap_or_default();
                    bail!("{name} exited early with {status}: {log}");
                }
            }
            if Instant::now() > deadline {
                bail!("the DNS responder or the HTTP server did not come up within 15 s");
            }
            sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// Runs each client under its own tcpdump and returns (fixture name, pcap path).
    fn capture_all(&mut self) -> Result<Vec<(&'static str, PathBuf)>> {
        let mut out = Vec::new();
        // DHCP first: the guest gets 192.168.127.3 from udhcpd (no broadcast flag: udhcpc).
        out.push(self.capture(
            "dhcp",
            "udp port 67 or udp port 68",
            &[&[
                "udhcpc",
                "-i",
                VETH_GST,
                "-f",
                "-q",
                "-n",
                "-t",
                "5",
                "-T",
                "3",
                "-s",
                "/etc/udhcpc/default.script",
            ]],
        )?);
        let addr = String::from_utf8_lossy(
            &in_ns(GST, "ip", &["-4", "-o", "addr", "show", "dev", VETH_GST])
                .output()?
                .stdout,
        )
        .into_owned();
        if !addr.contains("192.168.127.3/24") {
            bail!("udhcpc did not configure 192.168.127.3/24 on the guest: {addr}");
        }
        // ARP: forget the neighbours so the kernel asks again, for the proxy and the gateway.
        exec(&mut in_ns(GST, "ip", &["neigh", "flush", "dev", VETH_GST]))?;
        out.push(self.capture(
            "arp",
            "arp",
            &[
                &["ping", "-c", "1", "-W", "2", "192.168.127.253"],
                &["ping", "-c", "1", "-W", "2", "192.168.127.1"],
            ],
        )?);
        out.push(self.capture(
            "icmp",
            "icmp",
            &[
                &["ping", "-c", "2", "-i", "0.2", "-W", "2", "192.168.127.1"],
                &[
                    "ping",
                    "-c",
                    "2",
                    "-i",
                    "0.2",
                    "-W",
                    "2",
                    "-s",
                    "100",
                    "192.168.127.253",
                ],
            ],
        )?);
        out.push(self.capture(
            "dns",
            "udp port 53",
            &[
                &["busybox", "nslookup", "proxy.c2w.internal", "192.168.127.1"],
                &["busybox", "nslookup", "example.com", "192.168.127.1"],
            ],
        )?);
        out.push(self.capture(
            "tcp_http",
            "tcp port 80",
            &[&[
                "curl",
                "-sS",
                "-o",
                "/dev/null",
                "--max-time",
                "10",
                "http://192.168.127.253/",
            ]],
        )?);
        Ok(out)
    }

    /// Starts tcpdump on the guest's interface, runs `clients` in the guest namespace (each
    /// must succeed within 30 s), stops tcpdump and checks that it captured something.
    fn capture(
        &mut self,
        name: &'static str,
        filter: &str,
        clients: &[&[&str]],
    ) -> Result<(&'static str, PathBuf)> {
        let path = self.dir.join(format!("{name}.pcap"));
        let file = path.to_string_lossy().into_owned();
        let mut args = vec![
            "-i",
            VETH_GST,
            "-Z",
            "root",
            "--immediate-mode",
            "-U",
            "-s",
            "0",
            "-n",
            "-w",
            &file,
        ];
        args.extend(filter.split_whitespace());
        let mut tcpdump = in_ns(GST, "tcpdump", &args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start tcpdump")?;
        // tcpdump says "listening on ..." once the capture is armed (EOF means it failed).
        let stderr = tcpdump.stderr.take().expect("piped");
        let mut lines = BufReader::new(stderr).lines();
        let mut armed = false;
        for line in lines.by_ref() {
            if line?.contains("listening on") {
                armed = true;
                break;
            }
        }
        self.children.push((format!("tcpdump {name}"), tcpdump));
        if !armed {
            bail!("tcpdump for {name} did not start");
        }
        // Keep draining stderr so tcpdump never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        for client in clients {
            let mut cmd = in_ns(GST, "timeout", &["30"]);
            cmd.args(*client);
            exec(&mut cmd).with_context(|| format!("client for the {name} fixture"))?;
        }
        sleep(Duration::from_millis(500));
        let (_, mut tcpdump) = self.children.pop().expect("tcpdump was pushed last");
        exec(Command::new("kill").args(["-INT", &tcpdump.id().to_string()]))?;
        let status = tcpdump.wait()?;
        if !status.success() {
            bail!("tcpdump for {name} exited with {status}");
        }
        // 24-byte global header + at least one 16-byte record header.
        let len = fs::metadata(&path)?.len();
        if len <= 40 {
            bail!("the {name} capture is empty");
        }
        Ok((name, path))
    }
}

/// A DNS responder for the capture: A for the two c2w names, 198.18.0.1 for any other A,
/// NOERROR without answer for the rest (enough for nslookup to finish).
const DNS_RESPONDER: &str = r#"import socket, struct
hosts = {"proxy.c2w.internal": "192.168.127.253", "gateway.c2w.internal": "192.168.127.1"}
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("192.168.127.1", 53))
while True:
    q, peer = s.recvfrom(2048)
    try:
        i, labels = 12, []
        while q[i] != 0:
            labels.append(q[i + 1:i + 1 + q[i]].decode("ascii", "replace"))
            i += 1 + q[i]
        qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
        question = q[12:i + 5]
    except (IndexError, struct.error):
        continue
    answer = b""
    if qtype == 1:
        ip = hosts.get(".".join(labels).lower(), "198.18.0.1")
        answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(ip)
    flags = 0x8180 | (q[2] & 0x01) << 8
    header = q[:2] + struct.pack("!HHHHH", flags, 1, 1 if answer else 0, 0, 0)
    s.sendto(header + question + answer, peer)
"#;

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        teardown_namespaces();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Deletes both namespaces (which deletes the veth pair) and their /etc/netns directories.
fn teardown_namespaces() {
    for ns in [SRV, GST] {
        let _ = Command::new("ip")
            .args(["netns", "del", ns])
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(Path::new("/etc/netns").join(ns));
    }
    // /etc/netns itself only if nothing else lives there (remove_dir fails on a non-empty one).
    let _ = fs::remove_dir("/etc/netns");
}
