//! Deciding where a request goes: the [`Mode`] a connection interprets request-targets in, and
//! the [`Route`] a request takes (forwarded to an absolute URL, or one of the proxy's own pages).

use http::header;
use http::StatusCode;

use crate::error_page::ErrorPage;
use crate::head::RequestHead;
use crate::target::{origin_from_host_header, parse_target, Host, Origin, Scheme, Target};
use crate::Proxy;

/// How request-targets on a connection are interpreted.
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    /// A forward proxy: absolute-form requests; origin-form requests are for the proxy's own
    /// pages.
    Forward,
    /// Requests to an origin (inside a CONNECT tunnel, TLS to the proxy, or a transparently
    /// intercepted connection): origin-form targets at `origin` if fixed, else at the Host
    /// header, else at `fallback`.
    Origin {
        /// The scheme the guest used (https inside TLS).
        scheme: Scheme,
        /// The origin fixed by a CONNECT target, if any (wins over the Host header).
        fixed: Option<Origin>,
        /// Used when there is no Host header (e.g. the name a fake IP stands for).
        fallback: Option<Origin>,
    },
}

impl Mode {
    /// The mode inside TLS whose ClientHello named `sni`: with no CONNECT target and no
    /// fallback, the SNI names the origin (port 443) when there is no Host header.
    pub(crate) fn or_sni(self, sni: Option<&str>) -> Mode {
        match (self, sni) {
            (
                Mode::Origin {
                    scheme,
                    fixed: None,
                    fallback: None,
                },
                Some(sni),
            ) => {
                let fallback = Host::parse(sni).ok().map(|h| Origin {
                    scheme,
                    host: h,
                    port: 443,
                });
                Mode::Origin {
                    scheme,
                    fixed: None,
                    fallback,
                }
            }
            (other, _) => other,
        }
    }
}

/// Where a request goes, or an answer made here.
pub(crate) enum Route {
    /// The absolute URL the transport is asked for.
    Forward(String),
    /// A page of the proxy itself, at this path and query.
    OwnPage(String),
}

/// Decides the route of a (non-CONNECT) request from its target, the mode and the Host header.
pub(crate) fn route(
    proxy: &Proxy,
    head: &RequestHead,
    mode: &Mode,
) -> Result<Route, Box<ErrorPage>> {
    let bad = |msg: String| Box::new(ErrorPage::new(StatusCode::BAD_REQUEST, "bad-request", msg));
    let target = parse_target(&head.target, false).map_err(|e| bad(e.to_string()))?;
    match (mode, target) {
        (
            _,
            Target::Absolute {
                origin,
                path_and_query,
            },
        ) => {
            if proxy.is_own_host(&origin.host.bare()) && origin.scheme == Scheme::Http {
                return Ok(Route::OwnPage(path_and_query));
            }
            Ok(Route::Forward(origin.url(&path_and_query)))
        }
        (Mode::Forward, Target::Origin(path)) => Ok(Route::OwnPage(path)),
        (
            Mode::Origin {
                scheme,
                fixed,
                fallback,
            },
            Target::Origin(path),
        ) => {
            let origin = match fixed {
                Some(origin) => origin.clone(),
                None => match head.headers.get(header::HOST).and_then(|v| v.to_str().ok()) {
                    Some(host) => {
                        origin_from_host_header(host, *scheme).map_err(|e| bad(e.to_string()))?
                    }
                    None => fallback
                        .clone()
                        .ok_or_else(|| bad("missing Host header".into()))?,
                },
            };
            if proxy.is_own_host(&origin.host.bare()) {
                return Ok(Route::OwnPage(path));
            }
            Ok(Route::Forward(origin.url(&path)))
        }
        (_, Target::Asterisk) => Err(bad("OPTIONS * is not supported by this proxy".into())),
        (_, Target::Authority { .. }) => {
            Err(bad("authority-form is only valid with CONNECT".into()))
        }
    }
}
