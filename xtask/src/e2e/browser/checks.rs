//! The guest-side checks of the browser e2e: real programs in the guest namespace, whose only
//! network is the page's proxy behind the bridge. Everything is judged here, on the guest side.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::harness::guest::{expect_contains, Guest, PROXY};
use crate::harness::origins::{blob, sha256_hex};

/// Guest-visible names the page's rewrites map to the CORS origins (transparent mode).
pub const PLAIN_NAME: &str = "plain.test";
/// See [`PLAIN_NAME`].
pub const SECURE_NAME: &str = "secure.test";

impl Guest<'_> {
    /// The proxy's own CA download equals what the page exported.
    pub fn own_ca(&self, pem: &str) -> Result<String> {
        let got = self.sh(
            "curl -sS --fail http://192.168.127.253/ca.pem",
            Duration::from_secs(20),
        )?;
        if got.trim() != pem.trim() {
            bail!("http://192.168.127.253/ca.pem differs from caCertificatePem(): {got:?}");
        }
        Ok("same PEM as caCertificatePem()".into())
    }

    /// GET /hello through the proxy.
    pub fn get_hello(&self, base: &str) -> Result<String> {
        let body = self.sh(
            &format!("{} --fail {base}/hello", self.curl()),
            Duration::from_secs(30),
        )?;
        if body != "hello from the origin\n" {
            bail!("unexpected body {body:?}");
        }
        Ok("body matches".into())
    }

    /// Downloads `/blob/<size>` and compares its sha256; returns MB/s.
    pub fn download(&self, base: &str, size: usize, limit: Duration) -> Result<f64> {
        let started = Instant::now();
        let got = self.sh(
            &format!("{} --fail {base}/blob/{size} | sha256sum", self.curl()),
            limit,
        )?;
        let elapsed = started.elapsed();
        if !got.starts_with(&sha256_hex(&blob(size))) {
            bail!("sha256 mismatch: {got}");
        }
        Ok(size as f64 / elapsed.as_secs_f64() / 1e6)
    }

    /// POSTs `size` bytes to `/echo` (chunked or with a length); the origin reports what it got.
    pub fn upload(&self, base: &str, size: usize, chunked: bool) -> Result<String> {
        let path = self.work.join(format!("upload-{size}"));
        let data = blob(size);
        std::fs::write(&path, &data)?;
        let te = if chunked {
            "-H 'Transfer-Encoding: chunked'"
        } else {
            ""
        };
        let started = Instant::now();
        let got = self.sh(
            &format!(
                "{} --fail {te} --data-binary @{} {base}/echo",
                self.curl(),
                path.display()
            ),
            Duration::from_secs(120),
        )?;
        expect_contains(&got, &format!("POST {size} {}", sha256_hex(&data)))?;
        Ok(format!(
            "origin received {size} bytes, sha256 ok, {:.1} MB/s",
            size as f64 / started.elapsed().as_secs_f64() / 1e6
        ))
    }

    /// curl without any proxy setting to a rewritten guest-visible name.
    pub fn transparent(&self, url: &str) -> Result<String> {
        let got = self.sh(
            &format!("curl -sS --fail --cacert {} {url}/hello", self.ca.display()),
            Duration::from_secs(30),
        )?;
        if got != "hello from the origin\n" {
            bail!("unexpected body {got:?}");
        }
        Ok("body matches".into())
    }

    /// An origin without CORS headers: a 502 naming the URL and the browser's refusal.
    pub fn no_cors(&self, base: &str) -> Result<String> {
        let url = format!("{base}/hello");
        let got = self.sh(
            &format!("{} -w '\\n%{{http_code}}' {url}", self.curl()),
            Duration::from_secs(45),
        )?;
        let (body, code) = got.rsplit_once('\n').unwrap_or(("", &got));
        if code != "502" {
            bail!("expected 502, got {code}: {body:?}");
        }
        if !body.contains(&url) {
            bail!("the 502 body does not name {url}: {body:?}");
        }
        let lower = body.to_ascii_lowercase();
        if !(lower.contains("browser") && (lower.contains("refus") || lower.contains("cors"))) {
            bail!("the 502 body does not say the browser refused the request: {body:?}");
        }
        Ok(body
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(120)
            .collect())
    }

    /// The origin's header echo seen through the proxy carries no Cookie.
    pub fn no_cookie(&self, base: &str) -> Result<String> {
        let got = self.sh(
            &format!("{} --fail {base}/headers", self.curl()),
            Duration::from_secs(30),
        )?;
        let lower = got.to_ascii_lowercase();
        if !lower.contains("host:") {
            bail!("the header echo looks wrong: {got:?}");
        }
        if lower.contains("cookie:") || lower.contains("c2w_probe") {
            bail!("the origin saw the page's cookie: {got:?}");
        }
        Ok(format!(
            "{} request headers, none a Cookie",
            got.lines().count()
        ))
    }

    /// A 404 with the origin's body.
    pub fn not_found(&self, base: &str) -> Result<String> {
        let got = self.sh(
            &format!("{} -w ' %{{http_code}}' {base}/missing", self.curl()),
            Duration::from_secs(30),
        )?;
        if got != "not found here\n 404" {
            bail!("unexpected: {got:?}");
        }
        Ok("404 with the origin's body".into())
    }

    /// A redirect followed by fetch() arrives as the final response, marked as redirected.
    pub fn redirect(&self, base: &str) -> Result<String> {
        let got = self.sh(
            &format!("{} -i {base}/redirect", self.curl()),
            Duration::from_secs(30),
        )?;
        let lower = got.to_ascii_lowercase();
        expect_contains(&lower, "x-fetch-redirected: true")?;
        if !got.starts_with("HTTP/1.1 200") {
            bail!("expected the followed 200: {got:?}");
        }
        expect_contains(&got, "hello from the origin")?;
        Ok("200 with X-Fetch-Redirected: true and the target's body".into())
    }

    /// A destination outside the allow list gets 403 without any fetch.
    pub fn denied(&self) -> Result<String> {
        let got = self.sh(
            &format!("curl -sS -x {PROXY} -w ' %{{http_code}}' http://example.com/"),
            Duration::from_secs(30),
        )?;
        if !got.ends_with(" 403") || !got.contains("example.com") {
            bail!("unexpected: {got:?}");
        }
        Ok(got.lines().next().unwrap_or("").chars().take(120).collect())
    }
}
