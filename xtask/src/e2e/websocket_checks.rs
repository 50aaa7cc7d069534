//! The guest-side checks of guest WebSockets, shared by the native phase ([`super::websocket`]:
//! the runner, whose WebSocket client is tokio-tungstenite) and the browser's WebSocket phase
//! (`e2e --browser … websocket`: `NetProxy` on a page, whose client is the page's
//! `WebSocket`). Real clients run in the guest ([`CLIENT`], `ws_client.py`): Debian's
//! python3-websocket (websocket-client) through `http_proxy`/`https_proxy` (it tunnels `ws://`
//! with a CONNECT to port 80, `wss://` with a CONNECT to 443 whose TLS the proxy terminates),
//! and python3-websockets straight to the names (transparent 80 and 443). No Debian package
//! provides websocat (bookworm), so it is not among them.
//!
//! The proxy rewrites [`WS_NAME`] to the echo server's `ws://` listener and [`WSS_NAME`] to its
//! `wss://` listener ([`rewrites`]); the echo server records what reached it, so the checks see
//! both ends.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::relay_checks::StatsSource;
use crate::harness::guest::{text, Guest, PROXY};
use crate::harness::origins::{
    Session, WsEcho, CLOSE_REQUEST, KNOWN_PROTOCOLS, REFUSED_PATH, SERVER_CLOSE_CODE,
    SERVER_CLOSE_REASON,
};
use crate::report::Report;

/// The guest's client script.
pub(crate) const CLIENT: &str = include_str!("ws_client.py");
/// The interpreter the Debian packages install for (PATH may lead to another one, e.g.
/// pyenv's, which does not see /usr/lib/python3/dist-packages).
pub const DEBIAN_PYTHON: &str = "/usr/bin/python3";
/// The name the proxy maps to the echo server's plain listener.
pub const WS_NAME: &str = "ws.test";
/// The name the proxy maps to the echo server's TLS listener.
pub const WSS_NAME: &str = "wss.test";
/// The 1,000 small messages.
const MANY: usize = 1000;
/// The big message.
const BIG: usize = 1 << 20;
/// What the counters check moves: messages each way and their size.
const COUNTED: (u64, u64) = (20, 1000);

/// The rewrites the proxy needs: `(name, base URL)`.
pub fn rewrites(echo: &WsEcho) -> [(&'static str, String); 2] {
    [(WS_NAME, echo.ws_base()), (WSS_NAME, echo.wss_base())]
}

/// Who carries the guest's WebSockets, and so what the echo server can see.
pub enum Front {
    /// The native runner (tokio-tungstenite): the guest's close codes pass as sent.
    Native,
    /// A page's `WebSocket` served from `page_origin` (`http://127.0.0.1:PORT`): the browser
    /// sends that `Origin`, and a script may close only with 1000 or 3000–4999.
    Browser {
        /// The page's origin.
        page_origin: String,
    },
}

/// What the checks need.
pub struct WsEnv<'a> {
    /// The guest behind the proxy (its lease taken; `ca` is the proxy's CA).
    pub guest: &'a Guest<'a>,
    /// The echo server the names lead to.
    pub echo: &'a WsEcho,
    /// The proxy's stats document, as recent as the front end has it.
    pub stats: StatsSource<'a>,
    /// Native or in a browser.
    pub front: Front,
}

/// The two clients in the guest and how they reach the proxy.
#[derive(Clone, Copy)]
enum Client {
    /// websocket-client with the proxy variables: CONNECT tunnels.
    Proxied,
    /// websockets without them: transparent 80/443.
    Transparent,
}

impl Client {
    fn library(self) -> &'static str {
        match self {
            Self::Proxied => "websocket-client",
            Self::Transparent => "websockets",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Proxied => "websocket-client via CONNECT",
            Self::Transparent => "websockets transparent",
        }
    }
}

impl WsEnv<'_> {
    fn script(&self) -> Result<PathBuf> {
        let path = self.guest.work.join("ws_client.py");
        if !path.exists() {
            std::fs::write(&path, CLIENT)?;
        }
        Ok(path)
    }

    /// The shell line that runs the client with `args`.
    fn command(&self, client: Client, args: &[&str]) -> Result<String> {
        let proxy = match client {
            Client::Proxied => format!("http_proxy={PROXY} https_proxy={PROXY} "),
            Client::Transparent => String::new(),
        };
        let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
        Ok(format!(
            "{proxy}PROXY_CA={} {DEBIAN_PYTHON} {} {} {}",
            self.guest.ca.display(),
            self.script()?.display(),
            client.library(),
            quoted.join(" ")
        ))
    }

    /// Runs the client and parses its one JSON line.
    fn run(&self, client: Client, args: &[&str]) -> Result<Value> {
        let line = self.command(client, args)?;
        let out = self
            .guest
            .ns
            .output_within(&["sh", "-c", &line], Duration::from_secs(120))?;
        if !out.status.success() {
            bail!(
                "{} failed ({}): {}",
                client.library(),
                out.status,
                text(&out)
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or("");
        serde_json::from_str(last).with_context(|| format!("not JSON: {}", text(&out)))
    }

    fn stats(&self) -> Result<Value> {
        (self.stats)()
    }
}

/// `ws://ws.test/PATH?tag=TAG` or `wss://wss.test/…`.
fn url(secure: bool, path: &str, tag: &str) -> String {
    if secure {
        format!("wss://{WSS_NAME}{path}?tag={tag}")
    } else {
        format!("ws://{WS_NAME}{path}?tag={tag}")
    }
}

fn counter(stats: &Value, name: &str) -> u64 {
    stats
        .pointer(&format!("/proxy/websockets/{name}"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

fn flag(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool) == Some(true)
}

/// The one session the echo server saw for `tag`.
fn session(env: &WsEnv, tag: &str) -> Result<Session> {
    // The server records the end a moment after the client saw it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sessions = env.echo.sessions_tagged(&format!("tag={tag}"));
        match sessions.as_slice() {
            [one] if one.ended => return Ok(one.clone()),
            [_] if Instant::now() < deadline => {}
            [one] => bail!("the server's session for {tag} has not ended: {one:?}"),
            [] => bail!("the echo server saw no session tagged {tag}"),
            more => bail!("the echo server saw {} sessions tagged {tag}", more.len()),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs every check, each named `{label}: …`.
pub fn run(r: &mut Report, label: &str, env: &WsEnv) {
    for client in [Client::Proxied, Client::Transparent] {
        let c = client.label();
        for secure in [false, true] {
            let scheme = if secure { "wss" } else { "ws" };
            r.check(
                &format!("{label}: {c} {scheme}: text and binary echo"),
                || echo(env, client, secure),
            );
        }
        r.check(
            &format!("{label}: {c} ws: a 1 MiB binary and a 1 MiB text message, sha256"),
            || big(env, client, false),
        );
        r.check(
            &format!("{label}: {c} ws: {MANY} small messages arrive in order"),
            || many(env, client, false),
        );
        r.check(
            &format!("{label}: {c} ws: a subprotocol offered is negotiated and returned"),
            || protocol(env, client),
        );
        r.check(
            &format!(
                "{label}: {c} ws: the server's close {SERVER_CLOSE_CODE} and reason reach the guest"
            ),
            || server_close(env, client, false),
        );
        r.check(
            &format!("{label}: {c} ws: the guest's close 4002 and reason reach the server"),
            || client_close(env, client),
        );
        r.check(
            &format!("{label}: {c} ws: a refused upgrade is answered 502"),
            || refused_status(env, client),
        );
    }
    r.check(
        &format!("{label}: websocket-client via CONNECT wss: 1 MiB both kinds, sha256"),
        || big(env, Client::Proxied, true),
    );
    r.check(
        &format!("{label}: websockets transparent wss: {MANY} small messages in order"),
        || many(env, Client::Transparent, true),
    );
    r.check(
        &format!("{label}: websockets transparent wss: the server's close {SERVER_CLOSE_CODE} reaches the guest"),
        || server_close(env, Client::Transparent, true),
    );
    r.check(
        &format!(
            "{label}: curl absolute-form ws upgrade refused by the server: 502 naming the URL"
        ),
        || refused_page(env),
    );
    r.check(
        &format!("{label}: what reached the server: no guest headers; Origin as the front sets it"),
        || origin(env),
    );
    r.check(
        &format!("{label}: messages and bytes counted each way, exactly"),
        || counted(env),
    );
    r.check(
        &format!(
            "{label}: a guest killed mid-stream: the server is closed, websockets.open back to 0"
        ),
        || vanished(env),
    );
}

fn echo(env: &WsEnv, client: Client, secure: bool) -> Result<String> {
    let tag = format!("echo-{}-{secure}", client.library());
    let got = env.run(client, &["echo", &url(secure, "/echo", &tag)])?;
    if !flag(&got, "text_ok") || !flag(&got, "binary_ok") {
        bail!("echo wrong: {got}");
    }
    let s = session(env, &tag)?;
    if s.messages != 2 {
        bail!("the server saw {} messages, not 2: {s:?}", s.messages);
    }
    Ok(format!(
        "text {} and 1 KiB binary back; the server saw 2 messages",
        got["text"]
    ))
}

fn big(env: &WsEnv, client: Client, secure: bool) -> Result<String> {
    let tag = format!("big-{}-{secure}", client.library());
    let got = env.run(
        client,
        &["big", &url(secure, "/big", &tag), &BIG.to_string()],
    )?;
    if !flag(&got, "sha_ok") || !flag(&got, "text_ok") {
        bail!("1 MiB echo wrong: {got}");
    }
    let secs = got["seconds"].as_f64().unwrap_or(0.0);
    Ok(format!(
        "{} bytes binary round trip in {:.0} ms, sha256 ok; {} characters of text ok",
        got["len"],
        secs * 1000.0,
        got["text_len"]
    ))
}

fn many(env: &WsEnv, client: Client, secure: bool) -> Result<String> {
    let tag = format!("many-{}-{secure}", client.library());
    let got = env.run(
        client,
        &["many", &url(secure, "/many", &tag), &MANY.to_string()],
    )?;
    if got["count"].as_u64() != Some(MANY as u64) || !flag(&got, "in_order") {
        bail!("not {MANY} in order: {got}");
    }
    let s = session(env, &tag)?;
    if s.messages != MANY as u64 {
        bail!("the server saw {} messages: {s:?}", s.messages);
    }
    Ok(format!(
        "{MANY} sent and {MANY} back in order in {:.0} ms",
        got["seconds"].as_f64().unwrap_or(0.0) * 1000.0
    ))
}

fn protocol(env: &WsEnv, client: Client) -> Result<String> {
    let tag = format!("protocol-{}", client.library());
    // An unknown one first: the server picks the one it knows.
    let offered = format!("unknown.x,{}", KNOWN_PROTOCOLS[1]);
    let got = env.run(
        client,
        &["protocol", &url(false, "/protocol", &tag), &offered],
    )?;
    if got["protocol"].as_str() != Some(KNOWN_PROTOCOLS[1]) {
        bail!(
            "the guest got protocol {}, want {}",
            got["protocol"],
            KNOWN_PROTOCOLS[1]
        );
    }
    let s = session(env, &tag)?;
    if s.offered != ["unknown.x", KNOWN_PROTOCOLS[1]] {
        bail!("the server was offered {:?}", s.offered);
    }
    Ok(format!(
        "offered [{offered}], the server chose and the guest got {}",
        KNOWN_PROTOCOLS[1]
    ))
}

fn server_close(env: &WsEnv, client: Client, secure: bool) -> Result<String> {
    let tag = format!("server-close-{}-{secure}", client.library());
    let got = env.run(
        client,
        &["server-close", &url(secure, "/close", &tag), CLOSE_REQUEST],
    )?;
    if got["code"].as_u64() != Some(u64::from(SERVER_CLOSE_CODE))
        || got["reason"].as_str() != Some(SERVER_CLOSE_REASON)
    {
        bail!("the guest saw {got}, want code {SERVER_CLOSE_CODE} reason {SERVER_CLOSE_REASON:?}");
    }
    let s = session(env, &tag)?;
    if s.error.is_some() {
        bail!("the server's closing handshake did not complete: {s:?}");
    }
    Ok(format!(
        "the guest got {SERVER_CLOSE_CODE} {SERVER_CLOSE_REASON:?}; closing handshake complete"
    ))
}

fn client_close(env: &WsEnv, client: Client) -> Result<String> {
    let tag = format!("client-close-{}", client.library());
    let reason = "the guest is done";
    let got = env.run(
        client,
        &["client-close", &url(false, "/close", &tag), "4002", reason],
    )?;
    if !flag(&got, "closed") {
        bail!("the client did not close: {got}");
    }
    let s = session(env, &tag)?;
    // 4002 is a code a page's WebSocket may send too: the same in the browser.
    match &s.client_close {
        Some(Some((4002, r))) if r == reason => {
            Ok(format!("the server got 4002 {reason:?} from the guest"))
        }
        other => bail!("the server got {other:?}, want 4002 {reason:?}: {s:?}"),
    }
}

fn refused_status(env: &WsEnv, client: Client) -> Result<String> {
    let tag = format!("refused-{}", client.library());
    let before = counter(&settled_stats(env)?, "refused");
    let got = env.run(client, &["refused", &url(false, REFUSED_PATH, &tag)])?;
    if got["status"].as_u64() != Some(502) {
        bail!("the guest got {got}, want status 502");
    }
    let refused = counter(&settled_stats(env)?, "refused") - before;
    if refused != 1 {
        bail!("proxy.websockets.refused moved by {refused}, not 1");
    }
    Ok("502; proxy.websockets.refused +1".into())
}

/// The upgrade sent by curl in absolute form to the proxy, to see the 502's body.
fn refused_page(env: &WsEnv) -> Result<String> {
    let tag = "refused-curl";
    let target = format!("http://{WS_NAME}{REFUSED_PATH}?tag={tag}");
    let out = env.guest.sh(
        &format!(
            "curl -sS -i -x {PROXY} --max-time 30 -H 'Connection: Upgrade' -H 'Upgrade: websocket' \
             -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' '{target}'"
        ),
        Duration::from_secs(40),
    )?;
    let status = out.lines().next().unwrap_or("");
    if !status.contains(" 502") {
        bail!("not a 502: {out:?}");
    }
    let ws_url = format!("ws://{WS_NAME}{REFUSED_PATH}?tag={tag}");
    if !out.contains(&ws_url) {
        bail!("the 502 does not name {ws_url}: {out:?}");
    }
    if !out
        .to_ascii_lowercase()
        .contains("x-c2w-proxy-error: websocket-failed")
    {
        bail!("no x-c2w-proxy-error: websocket-failed: {out:?}");
    }
    let s = session(env, tag)?;
    if s.error.is_none() {
        bail!("the server did not refuse: {s:?}");
    }
    Ok(format!("{}, the body names {ws_url}", status.trim()))
}

/// websocket-client sends `Origin: http://ws.test` by default; the proxy never passes the
/// guest's headers on. Natively the server sees no Origin at all; in the browser the page's
/// `WebSocket` always sends the page's own origin (a script cannot change or drop it).
fn origin(env: &WsEnv) -> Result<String> {
    let tag = "echo-websocket-client-false";
    let s = session(env, tag)?;
    match (&env.front, s.origin.as_deref()) {
        (Front::Native, None) => {
            Ok("websocket-client sent Origin; the server saw none (tokio-tungstenite)".into())
        }
        (Front::Browser { page_origin }, Some(seen)) if seen == page_origin => Ok(format!(
            "the server saw the page's Origin {seen} (a page's WebSocket always sends its own), \
             not the guest's"
        )),
        (Front::Native, seen) => bail!("the server saw Origin {seen:?}, want none"),
        (Front::Browser { page_origin }, seen) => {
            bail!("the server saw Origin {seen:?}, want the page's {page_origin}")
        }
    }
}

/// The stats once they stopped moving (natively rewritten every 500 ms; a page posts them
/// every 250 ms while they change).
fn settled_stats(env: &WsEnv) -> Result<Value> {
    let mut last = env.stats()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        std::thread::sleep(Duration::from_millis(700));
        let now = env.stats()?;
        let same = [
            "open",
            "opened",
            "refused",
            "messagesToGuest",
            "messagesFromGuest",
        ]
        .iter()
        .all(|k| counter(&now, k) == counter(&last, k));
        if same && counter(&now, "open") == 0 {
            return Ok(now);
        }
        if Instant::now() > deadline {
            bail!(
                "the WebSocket counters did not settle: {}",
                now["proxy"]["websockets"]
            );
        }
        last = now;
    }
}

fn counted(env: &WsEnv) -> Result<String> {
    let (n, size) = COUNTED;
    let before = settled_stats(env)?;
    let tag = "counted";
    let got = env.run(
        Client::Proxied,
        &[
            "counted",
            &url(false, "/counted", tag),
            &n.to_string(),
            &size.to_string(),
        ],
    )?;
    if !flag(&got, "echoed") {
        bail!("the echoes were wrong: {got}");
    }
    let after = settled_stats(env)?;
    let delta = |k: &str| counter(&after, k) - counter(&before, k);
    let want = [
        ("opened", 1),
        ("messagesFromGuest", n),
        ("messagesToGuest", n),
        ("bytesFromGuest", n * size),
        ("bytesToGuest", n * size),
    ];
    let wrong: Vec<String> = want
        .iter()
        .filter(|(k, v)| delta(k) != *v)
        .map(|(k, v)| format!("{k} +{} (want +{v})", delta(k)))
        .collect();
    if !wrong.is_empty() {
        bail!("counters: {}", wrong.join(", "));
    }
    Ok(format!(
        "{n} messages of {size} bytes each way: opened +1, messages +{n}/+{n}, bytes +{}/+{}; open 0",
        n * size,
        n * size
    ))
}

fn vanished(env: &WsEnv) -> Result<String> {
    let tag = "vanished";
    let line = env.command(Client::Proxied, &["hold", &url(false, "/hold", tag)])?;
    let mut child = env
        .guest
        .ns
        .command(&["sh", "-c", &format!("exec env {line}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting the client that will be killed")?;
    let outcome = (|| -> Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let stats = env.stats()?;
            let busy = env
                .echo
                .sessions_tagged(&format!("tag={tag}"))
                .first()
                .is_some_and(|s| s.messages >= 5);
            if counter(&stats, "open") >= 1 && busy {
                return Ok(counter(&stats, "open"));
            }
            if let Some(status) = child.try_wait()? {
                bail!("the client ended by itself ({status})");
            }
            if Instant::now() > deadline {
                bail!(
                    "no busy session within 30 s: {}",
                    stats["proxy"]["websockets"]
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })();
    // SIGKILL: the process never says goodbye; its kernel closes the connection.
    let _ = child.kill();
    let _ = child.wait();
    let open_before = outcome?;
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(20);
    loop {
        let stats = env.stats()?;
        if counter(&stats, "open") == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "websockets.open still {} 20 s after the kill",
                counter(&stats, "open")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let open_after = killed.elapsed();
    let s = session(env, tag)?;
    // The proxy closes the server side with 1001 "going away"; a page's WebSocket may not
    // send 1001 (only 1000 and 3000–4999), so in the browser it reaches the server as 1000.
    let want = match env.front {
        Front::Native => 1001,
        Front::Browser { .. } => 1000,
    };
    match &s.client_close {
        Some(Some((code, reason))) if *code == want => Ok(format!(
            "open {open_before} -> 0 {} ms after the kill; the server got {code} {reason:?} \
             after {} messages",
            open_after.as_millis(),
            s.messages
        )),
        other => bail!("the server got {other:?}, want {want}: {s:?}"),
    }
}
