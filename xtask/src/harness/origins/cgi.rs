//! `git http-backend` as a CGI/1.1 program (RFC 3875) behind [`Origin`](super::Origin)'s
//! `/git/` paths: git's smart HTTP protocol for the repositories under the origin's `git/`
//! directory. The request body (either framing) is fed to its stdin from a second thread while
//! its output is read; the output is parsed and answered with a Content-Length.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::process::{ChildStdin, Command, Stdio};
use std::thread;

use super::files::OriginFiles;
use super::http1::Framing;
use super::routes::{Body, Request, Response};

/// Why a CGI program's output is no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CgiError {
    /// The output ends before the empty line after the header.
    NoHeaderEnd,
    /// A header line that is no `name: value` field.
    BadHeader(String),
    /// A `Status:` that does not start with a three-digit code.
    BadStatus(String),
}

impl std::fmt::Display for CgiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CgiError::NoHeaderEnd => write!(f, "the output has no complete header"),
            CgiError::BadHeader(line) => write!(f, "bad header line {line:?}"),
            CgiError::BadStatus(value) => write!(f, "bad Status {value:?}"),
        }
    }
}

impl std::error::Error for CgiError {}

/// Runs `git http-backend` for `request` (a path under `/git/`) with `body` on its stdin.
/// A program that cannot run or answers nonsense gets a 500; an error is the request body's.
pub(super) fn git_http_backend<B: Read + Send>(
    request: &Request,
    body: &mut B,
    files: &OriginFiles,
) -> io::Result<Response> {
    let head = request.head;
    let mut command = Command::new("git");
    command
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", files.dir.join("git"))
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", format!("HTTP/1.{}", head.version))
        .env("REQUEST_METHOD", &head.method)
        .env("PATH_INFO", request.path.trim_start_matches("/git"))
        .env("QUERY_STRING", request.query)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env_remove("CONTENT_LENGTH")
        .env_remove("CONTENT_TYPE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // A chunked body has no length to give: git then reads its stdin to the end.
    if let Framing::Length(len) = request.framing {
        command.env("CONTENT_LENGTH", len.to_string());
    }
    if let Some(content_type) = head.header("content-type") {
        command.env("CONTENT_TYPE", content_type);
    }
    for (name, value) in protocol_variables(&head.headers) {
        command.env(name, value);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            return Ok(Response::text(
                500,
                format!("cgi error: running git http-backend: {err}\n"),
            ))
        }
    };
    let stdin = child.stdin.take().expect("stdin is piped");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let (fed, output) = thread::scope(|scope| {
        let feeder = scope.spawn(move || feed(body, stdin));
        let mut output = Vec::new();
        let read = stdout.read_to_end(&mut output).map(|_| output);
        let fed = feeder.join().expect("the CGI feeder thread panicked");
        (fed, read)
    });
    let _ = child.wait();
    fed?;
    Ok(match output.map(|out| parse_output(&out)) {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => Response::text(500, format!("cgi error: git http-backend: {err}\n")),
        Err(err) => Response::text(500, format!("cgi error: reading git http-backend: {err}\n")),
    })
}

/// Copies the request body to the program's stdin and closes it. An error is the body's; a
/// program that stops reading just ends the copy (the caller reads the rest of the body).
fn feed<B: Read>(body: &mut B, mut stdin: ChildStdin) -> io::Result<()> {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = body.read(&mut buf)?;
        if n == 0 || stdin.write_all(&buf[..n]).is_err() {
            return Ok(());
        }
    }
}

/// The request headers as CGI protocol variables (`HTTP_<NAME>`, dashes as underscores,
/// repeated fields joined with ", "), `Git-Protocol` among them. Content-Type and
/// Content-Length have their own variables; `Proxy` is left out, since `HTTP_PROXY` would be
/// taken for a proxy setting ("httpoxy").
fn protocol_variables(headers: &[(String, String)]) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let name = name.to_ascii_uppercase().replace('-', "_");
        if matches!(name.as_str(), "CONTENT_TYPE" | "CONTENT_LENGTH" | "PROXY") {
            continue;
        }
        out.entry(format!("HTTP_{name}"))
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(value);
            })
            .or_insert_with(|| value.clone());
    }
    out
}

/// A CGI program's output as an answer (RFC 3875 section 6): header lines (CRLF or LF) up to
/// the first empty one, then the body. `Status:` sets the status (200 without it, 302 with a
/// `Location` and no `Status`); framing fields are dropped, the connection sets its own.
pub(super) fn parse_output(out: &[u8]) -> Result<Response, CgiError> {
    let mut status = None;
    let mut headers = Vec::new();
    let mut at = 0;
    loop {
        let Some(end) = out[at..].iter().position(|&b| b == b'\n') else {
            return Err(CgiError::NoHeaderEnd);
        };
        let line = &out[at..at + end];
        at += end + 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let text = String::from_utf8_lossy(line);
        let Some((name, value)) = text.split_once(':') else {
            return Err(CgiError::BadHeader(text.into_owned()));
        };
        let (name, value) = (name.trim(), value.trim());
        let is_token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(is_token) {
            return Err(CgiError::BadHeader(text.into_owned()));
        }
        if name.eq_ignore_ascii_case("status") {
            let code = value.split(' ').next().unwrap_or_default();
            match code.parse::<u16>() {
                Ok(n) if code.len() == 3 && (100..=999).contains(&n) => status = Some(n),
                _ => return Err(CgiError::BadStatus(value.to_string())),
            }
        } else if !["content-length", "transfer-encoding", "connection"]
            .iter()
            .any(|f| name.eq_ignore_ascii_case(f))
        {
            headers.push((name.to_string(), value.to_string()));
        }
    }
    let redirect = headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("location"));
    let status = status.unwrap_or(if redirect { 302 } else { 200 });
    Ok(Response {
        status,
        headers,
        body: Body::Bytes(out[at..].to_vec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(out: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let response = parse_output(out).unwrap();
        let Body::Bytes(body) = response.body else {
            panic!("a CGI body is bytes")
        };
        (response.status, response.headers, body)
    }

    #[test]
    fn cgi_output_splits_at_the_first_empty_line_with_status_and_fields() {
        let (status, headers, body) = parsed(
            b"Content-Type: application/x-git-upload-pack-advertisement\r\n\
              Cache-Control: no-cache\r\nContent-Length: 99\r\n\r\n001e# service\r\n\r\nrest",
        );
        assert_eq!(status, 200);
        assert_eq!(
            headers,
            vec![
                (
                    "Content-Type".to_string(),
                    "application/x-git-upload-pack-advertisement".to_string()
                ),
                ("Cache-Control".into(), "no-cache".into()),
            ]
        );
        assert_eq!(body, b"001e# service\r\n\r\nrest");
        // LF-only header; a CRLFCRLF later in the body does not move the split.
        let (status, headers, body) =
            parsed(b"Status: 404 Not Found\nContent-Type: text/plain\n\nno repo\r\n\r\nx");
        assert_eq!(status, 404);
        assert_eq!(headers.len(), 1);
        assert_eq!(body, b"no repo\r\n\r\nx");
        let (status, _, body) = parsed(b"Location: /elsewhere\r\n\r\n");
        assert_eq!((status, body.len()), (302, 0));
        let (status, _, _) = parsed(b"Status: 403\r\n\r\n");
        assert_eq!(status, 403);
    }

    #[test]
    fn cgi_output_without_a_proper_header_is_an_error() {
        assert_eq!(
            parse_output(b"Content-Type: text/plain\r\n").err(),
            Some(CgiError::NoHeaderEnd)
        );
        assert_eq!(parse_output(b"").err(), Some(CgiError::NoHeaderEnd));
        assert!(matches!(
            parse_output(b"bad name: x\n\n"),
            Err(CgiError::BadHeader(_))
        ));
        assert!(matches!(
            parse_output(b"no colon\n\n"),
            Err(CgiError::BadHeader(_))
        ));
        assert!(matches!(
            parse_output(b"Status: OK\r\n\r\n"),
            Err(CgiError::BadStatus(_))
        ));
        assert!(matches!(
            parse_output(b"Status: 2000 Big\r\n\r\n"),
            Err(CgiError::BadStatus(_))
        ));
    }

    #[test]
    fn request_headers_become_protocol_variables() {
        let headers = [
            ("Git-Protocol", "version=2"),
            ("Content-Type", "application/x-git-upload-pack-request"),
            ("Accept", "a"),
            ("accept", "b"),
            ("Proxy", "http://evil"),
        ]
        .map(|(n, v)| (n.to_string(), v.to_string()));
        let vars = protocol_variables(&headers);
        assert_eq!(
            vars.get("HTTP_GIT_PROTOCOL").map(String::as_str),
            Some("version=2")
        );
        assert_eq!(vars.get("HTTP_ACCEPT").map(String::as_str), Some("a, b"));
        assert!(!vars.contains_key("HTTP_CONTENT_TYPE"));
        assert!(!vars.contains_key("HTTP_PROXY"));
    }
}
