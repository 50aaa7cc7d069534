//! The services behind the virtual network's addresses: which TCP listeners exist and which
//! proxy entry serves each. Shared by the native runner and the browser build.
//!
//! - `proxy_ip:80`: the forward proxy (`http_proxy`/`https_proxy`), CONNECT included.
//! - `proxy_ip:443`: TLS to the proxy itself (the original listens there too).
//! - any fake IP from the DNS server, ports 80 and 443: transparent interception for programs
//!   that ignore the proxy variables; the fake IP's name is the fallback origin. Other ports
//!   on fake IPs, and every unserved port, are refused at once with RST by the stack.
//! - With a relay (`crate::relay`), port 443 of fake IPs is not intercepted: it goes through
//!   the relay end to end like every other port of elsewhere.

use std::net::Ipv4Addr;
use std::rc::Rc;

use http_proxy::target::{Host, Origin, Scheme};
use http_proxy::{Entry, Proxy};
use net_stack::{ListenAddr, ListenError, Stack, TcpListener, TcpStream};

use crate::runtime::Runtime;

/// Which entry a listener's connections get.
#[derive(Debug, Clone, Copy)]
enum Service {
    ForwardProxy,
    ProxyTls,
    TransparentHttp,
    TransparentHttps,
}

/// Opens the proxy's listeners on `stack` and spawns their accept loops on `runtime`.
pub fn start(
    stack: &Stack,
    proxy: Rc<Proxy>,
    proxy_ip: Ipv4Addr,
    transparent_https: bool,
    runtime: Rc<dyn Runtime>,
) -> Result<(), ListenError> {
    let mut listeners = vec![
        (
            stack.listen(ListenAddr::Ip(proxy_ip), 80)?,
            Service::ForwardProxy,
        ),
        (
            stack.listen(ListenAddr::Ip(proxy_ip), 443)?,
            Service::ProxyTls,
        ),
        (
            stack.listen(ListenAddr::FakeIps, 80)?,
            Service::TransparentHttp,
        ),
    ];
    if transparent_https {
        listeners.push((
            stack.listen(ListenAddr::FakeIps, 443)?,
            Service::TransparentHttps,
        ));
    }
    for (listener, service) in listeners {
        let task = accept_loop(
            listener,
            stack.clone(),
            proxy.clone(),
            service,
            runtime.clone(),
        );
        runtime.spawn(Box::pin(task));
    }
    Ok(())
}

/// The origin a transparently intercepted connection stands for: the name its fake IP was
/// handed out for.
fn fake_ip_origin(stack: &Stack, stream: &TcpStream, scheme: Scheme) -> Option<Origin> {
    let local = stream.local_addr();
    let name = stack.fake_ip_name(*local.ip())?;
    let host = Host::parse(&name).ok()?;
    Some(Origin {
        scheme,
        host,
        port: local.port(),
    })
}

async fn accept_loop(
    listener: TcpListener,
    stack: Stack,
    proxy: Rc<Proxy>,
    service: Service,
    runtime: Rc<dyn Runtime>,
) {
    loop {
        let stream = listener.accept().await;
        let peer = stream.peer_addr();
        let local = stream.local_addr();
        let entry = match service {
            Service::ForwardProxy => Entry::ForwardProxy,
            Service::ProxyTls => Entry::Tls { fallback: None },
            Service::TransparentHttp => Entry::Http {
                fallback: fake_ip_origin(&stack, &stream, Scheme::Http),
            },
            Service::TransparentHttps => Entry::Tls {
                fallback: fake_ip_origin(&stack, &stream, Scheme::Https),
            },
        };
        tracing::debug!(%peer, %local, ?service, "guest connection");
        let proxy = proxy.clone();
        runtime.spawn(Box::pin(async move {
            if let Err(err) = proxy.serve(stream, entry).await {
                tracing::debug!(%peer, %local, error = %err, "guest connection ended with an error");
            }
        }));
    }
}
