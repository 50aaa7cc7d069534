//! What the network benchmark makes clients do, independent of the path the traffic takes: each
//! workload is a curl command line run where the [`Route`]'s clients run, timed by curl itself
//! (`-w`), so process start-up and namespace entry are not counted.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use sha2::{Digest, Sha256};

use crate::harness::origins::{blob, BlobReader};

/// `http` or `https` origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// The plain HTTP origin.
    Http,
    /// The HTTPS origin (certificate from the test CA).
    Https,
}

impl Scheme {
    /// Both, in table order.
    pub const BOTH: [Scheme; 2] = [Scheme::Http, Scheme::Https];

    /// `http` / `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Where a workload's clients run and how they reach the origins: the host itself (the direct
/// reference), or a guest namespace behind one of the proxy's front ends, or behind a peer.
pub trait Route: Sync {
    /// Short name used in metric names: `direct`, `native`, `browser`, `c2w`, `v86`, ...
    fn name(&self) -> String;
    /// Runs `script` with `sh -c` where this route's clients run; returns stdout, fails with
    /// all output when the script fails.
    fn sh(&self, script: &str, limit: Duration) -> Result<String>;
    /// The curl command prefix (proxy, trusted CA, connection redirection) for this route,
    /// without URLs; always includes `-sS`.
    fn curl(&self) -> String;
    /// The base URL (`scheme://host:port`) clients of this route use for the origin.
    fn base(&self, scheme: Scheme) -> Option<String>;
    /// A directory this route's clients can write and xtask can read.
    fn scratch(&self) -> &Path;
    /// The serving side's memory now (RSS natively, wasm memory in a browser), when known.
    fn memory(&self) -> Option<u64> {
        None
    }
    /// CPU time used so far by the serving side (the runner, the browser's processes), when
    /// known.
    fn cpu_time(&self) -> Option<Duration> {
        None
    }
    /// The proxy's own base URL (`http://192.168.127.253`), where it answers requests itself
    /// (its CA at `/ca.pem`) without the way out: what a request costs through the stack and
    /// the proxy alone. `None` for routes without our proxy.
    fn own_pages(&self) -> Option<String> {
        None
    }

    /// A base URL for a host the proxy has never seen (an HTTPS name mapped to the origin), for
    /// the new-host latency; `None` when the route has no such names.
    fn fresh_https_host(&self, _n: usize) -> Option<String> {
        None
    }
}

/// Megabytes (10^6 bytes) per second.
pub fn mb_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / 1e6 / seconds.max(1e-9)
}

/// One download of `/blob/<size>`: the body is hashed in a pipe and compared with the
/// expected sha256; returns the transfer time in seconds (curl's `time_total`).
pub fn download(route: &dyn Route, scheme: Scheme, size: u64, expected: &str) -> Result<f64> {
    let base = route
        .base(scheme)
        .context("route does not carry this scheme")?;
    let timing = route.scratch().join("timing");
    let script = format!(
        "{curl} -w '%{{stderr}}%{{time_total}} %{{size_download}} %{{http_code}}\\n' {base}/blob/{size} 2>{t} | sha256sum",
        curl = route.curl(),
        t = timing.display()
    );
    let limit = Duration::from_secs(60 + size / 500_000);
    let out = route.sh(&script, limit)?;
    let stats = std::fs::read_to_string(&timing).unwrap_or_default();
    let (time, got_size, code) = parse_timing(&stats)?;
    if code != 200 || got_size != size {
        bail!("HTTP {code}, {got_size} of {size} bytes: {stats}");
    }
    let sha = out.split_whitespace().next().unwrap_or("");
    if sha != expected {
        bail!("sha256 mismatch for {size} bytes: got {sha}");
    }
    Ok(time)
}

/// The sha256 of `/blob/<size>` (computed once per size).
pub fn blob_sha(size: u64) -> String {
    let mut hasher = Sha256::new();
    std::io::copy(&mut BlobReader::new(size as usize), &mut hasher).expect("hashing memory");
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Parses the last `time size code` line curl wrote.
fn parse_timing(text: &str) -> Result<(f64, u64, u16)> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.split_whitespace().count() == 3 && !l.starts_with("curl"))
        .with_context(|| format!("no timing line from curl: {text:?}"))?;
    let mut parts = line.split_whitespace();
    let time = parts.next().unwrap_or("").parse::<f64>();
    let size = parts.next().unwrap_or("").parse::<u64>();
    let code = parts.next().unwrap_or("").parse::<u16>();
    match (time, size, code) {
        (Ok(t), Ok(s), Ok(c)) => Ok((t, s, c)),
        _ => bail!("bad timing line from curl: {line:?} in {text:?}"),
    }
}

/// One POST of `size` bytes to `/echo`, which answers with the length and sha256 it received;
/// returns curl's `time_total`.
pub fn upload(route: &dyn Route, scheme: Scheme, size: u64, file: &Path) -> Result<f64> {
    let base = route
        .base(scheme)
        .context("route does not carry this scheme")?;
    let script = format!(
        "{curl} -w '\\n%{{time_total}} %{{size_upload}} %{{http_code}}\\n' --data-binary @{f} -H 'Content-Type: application/octet-stream' {base}/echo",
        curl = route.curl(),
        f = file.display()
    );
    let out = route.sh(&script, Duration::from_secs(60 + size / 500_000))?;
    let (time, sent, code) = parse_timing(&out)?;
    let want = format!("POST {size} {}", blob_sha(size));
    if code != 200 || sent != size || !out.contains(&want) {
        bail!("upload of {size} bytes: HTTP {code}, sent {sent}: {out}");
    }
    Ok(time)
}

/// Writes `/blob/<size>`'s bytes to `path` (the upload body) unless it is already there.
pub fn upload_file(path: &Path, size: u64) -> Result<()> {
    if std::fs::metadata(path).map(|m| m.len()).ok() != Some(size) {
        std::fs::write(path, blob(size as usize))?;
    }
    Ok(())
}

/// Latency of `n` small requests (`/hello`) in one curl run: on one keep-alive connection, or
/// (`new_connections`) each on its own connection (`Connection: close`). Returns the per-request
/// times in milliseconds.
pub fn requests(
    route: &dyn Route,
    scheme: Scheme,
    n: usize,
    new_connections: bool,
) -> Result<Vec<f64>> {
    let base = route
        .base(scheme)
        .context("route does not carry this scheme")?;
    requests_to(route, &format!("{base}/hello"), n, new_connections)
}

/// `n` sequential GETs of `url` (with `?1`…`?n` appended) in one curl run, on one keep-alive
/// connection or each on a new one: the time of each in ms.
pub fn requests_to(
    route: &dyn Route,
    url: &str,
    n: usize,
    new_connections: bool,
) -> Result<Vec<f64>> {
    let close = if new_connections {
        "-H 'Connection: close' "
    } else {
        ""
    };
    let script = format!(
        "{curl} {close}-o /dev/null -w '%{{time_total}} %{{http_code}} %{{num_connects}}\\n' '{url}?[1-{n}]'",
        curl = route.curl(),
    );
    let out = route.sh(&script, Duration::from_secs(120))?;
    let mut times = Vec::new();
    let mut connects = 0;
    for line in out.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() != 3 {
            continue;
        }
        if parts[1] != "200" {
            bail!("request answered {}: {out}", parts[1]);
        }
        times.push(parts[0].parse::<f64>().context("time")? * 1e3);
        connects += parts[2].parse::<u32>().unwrap_or(0);
    }
    if times.len() != n {
        bail!("{} of {n} requests completed: {out}", times.len());
    }
    if new_connections && connects < n as u32 / 2 {
        bail!("only {connects} new connections for {n} requests with Connection: close");
    }
    Ok(times)
}

/// First request to a new HTTPS host, then a second one to the same (now known) host, each in
/// its own curl run (a new connection and TLS handshake each): `rounds` pairs of times in ms.
pub fn https_hosts(route: &dyn Route, rounds: usize) -> Result<Vec<(f64, f64)>> {
    let mut pairs = Vec::new();
    for i in 0..rounds {
        let base = route
            .fresh_https_host(i)
            .context("route has no fresh HTTPS names")?;
        let script = format!(
            "for i in 1 2; do {curl} -o /dev/null -w '%{{time_total}} %{{http_code}}\\n' {base}/hello; done",
            curl = route.curl()
        );
        let out = route.sh(&script, Duration::from_secs(30))?;
        let times = ok_times_ms(&out);
        if times.len() != 2 {
            bail!("new-host round {i}: {out}");
        }
        pairs.push((times[0], times[1]));
    }
    Ok(pairs)
}

/// The times in ms of the `200` lines of curl's `-w '%{time_total} %{http_code}\n'` output.
pub fn ok_times_ms(out: &str) -> Vec<f64> {
    out.lines()
        .filter_map(|l| {
            let (t, code) = l.split_once(' ')?;
            (code.trim() == "200").then(|| t.parse::<f64>().ok())?
        })
        .map(|t| t * 1e3)
        .collect()
}

/// `n` simultaneous downloads of `/blob/<size>` (curl `--parallel`), each checked; returns the
/// wall time in seconds from the first request to the last byte.
pub fn concurrent(route: &dyn Route, scheme: Scheme, n: usize, size: u64) -> Result<f64> {
    let base = route
        .base(scheme)
        .context("route does not carry this scheme")?;
    let dir = route.scratch().join(format!("parallel-{n}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let script = format!(
        "cd {d} && {curl} --parallel --parallel-immediate --parallel-max {n} -w '%{{http_code}}\\n' -o 'f#1' '{base}/blob/{size}?[1-{n}]'",
        d = dir.display(),
        curl = route.curl(),
    );
    let start = Instant::now();
    let out = route.sh(
        &script,
        Duration::from_secs(120 + n as u64 * size / 200_000),
    )?;
    let wall = start.elapsed().as_secs_f64();
    let ok = out.lines().filter(|l| l.trim() == "200").count();
    let expected = blob(size as usize);
    let mut correct = 0;
    for i in 1..=n {
        if std::fs::read(dir.join(format!("f{i}"))).ok().as_deref() == Some(&expected[..]) {
            correct += 1;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if ok != n || correct != n {
        bail!("{n} parallel downloads: {ok} answered 200, {correct} byte-exact");
    }
    Ok(wall)
}

/// Median of `values` (which must not be empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The `p`-th percentile of `values` (nearest rank: the smallest value with at least `p` % of
/// the values at or below it); `values` must not be empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Mean of `values`.
#[cfg(test)]
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_lines_parse() {
        assert_eq!(
            parse_timing("0.5 1048576 200\n").unwrap(),
            (0.5, 1_048_576, 200)
        );
        assert_eq!(
            parse_timing("curl: (18) transfer closed\n1.25 10 200\n").unwrap(),
            (1.25, 10, 200)
        );
        assert!(parse_timing("curl: (7) refused\n").is_err());
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(mean(&[1.0, 3.0]), 2.0);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=200).rev().map(f64::from).collect();
        assert_eq!(percentile(&values, 90.0), 180.0);
        assert_eq!(percentile(&values, 50.0), 100.0);
        assert_eq!(percentile(&[7.0], 90.0), 7.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 0.0), 1.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 100.0), 3.0);
    }
}
