//! `--forward [HOST:]PORT=GUEST_PORT`: a host port whose connections are carried into the
//! guest, like gvproxy's port forwards. Each accepted host connection becomes a connection the
//! stack opens to the guest's current address (its latest DHCP lease) and port, spliced both
//! ways. No guest yet, or nothing listening there: the host connection is reset at once.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::str::FromStr;
use std::time::Duration;

use http_proxy::{splice, HALF_CLOSE_LINGER};
use net_stack::Stack;
use tokio_util::compat::TokioAsyncReadCompatExt;

use super::RunnerError;
use crate::guest::{guest_ip, CONNECT_TIMEOUT};
use crate::runtime::Runtime;

/// One `--forward`: where the host listens and the guest port it leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// The host address and port (127.0.0.1 when only a port is given).
    pub listen: SocketAddr,
    /// The guest's port.
    pub guest_port: u16,
}

/// Why a `--forward` value is not `[HOST:]PORT=GUEST_PORT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--forward {value:?}: {why} (want [HOST:]PORT=GUEST_PORT, e.g. 8080=80)")]
pub struct ForwardParseError {
    value: String,
    why: &'static str,
}

impl FromStr for Forward {
    type Err = ForwardParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let fail = |why| ForwardParseError {
            value: value.to_string(),
            why,
        };
        let (listen, guest) = value.split_once('=').ok_or_else(|| fail("no `=`"))?;
        let guest_port: u16 = guest.parse().map_err(|_| fail("not a guest port"))?;
        if guest_port == 0 {
            return Err(fail("guest port 0"));
        }
        let listen = match listen.parse::<u16>() {
            Ok(port) => SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Err(_) => listen
                .parse::<SocketAddr>()
                .map_err(|_| fail("not a host port or HOST:PORT"))?,
        };
        Ok(Forward { listen, guest_port })
    }
}

/// Binds every forward's host port (an error names the one that failed), then serves them
/// until the runner stops.
pub async fn serve(
    stack: &Stack,
    runtime: &Rc<dyn Runtime>,
    forwards: &[Forward],
) -> Result<(), RunnerError> {
    let mut listeners = Vec::new();
    for forward in forwards {
        let listener = tokio::net::TcpListener::bind(forward.listen)
            .await
            .map_err(|source| RunnerError::Socket {
                addr: forward.listen.to_string(),
                source,
            })?;
        tracing::info!(listen = %forward.listen, guest_port = forward.guest_port, "forwarding into the guest");
        listeners.push((listener, *forward));
    }
    let serving = listeners.into_iter().map(|(listener, forward)| {
        let stack = stack.clone();
        let runtime = runtime.clone();
        async move {
            loop {
                match listener.accept().await {
                    Ok((socket, peer)) => {
                        let stack = stack.clone();
                        let timer = runtime.timer();
                        runtime.spawn(Box::pin(async move {
                            carry(&stack, socket, peer, forward.guest_port, timer.as_ref()).await
                        }));
                    }
                    Err(err) => {
                        tracing::warn!(listen = %forward.listen, error = %err, "forward: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    });
    futures::future::join_all(serving).await;
    // Without forwards there is nothing to serve; the runner's other work goes on.
    std::future::pending().await
}

/// Carries one host connection into the guest; resets it when the guest cannot be reached.
async fn carry(
    stack: &Stack,
    socket: tokio::net::TcpStream,
    peer: SocketAddr,
    guest_port: u16,
    timer: &dyn fetch_transport::Timer,
) {
    let _ = socket.set_nodelay(true);
    let Some(ip) = guest_ip(stack) else {
        tracing::info!(%peer, guest_port, "forward: no guest has a lease yet; reset");
        reset(socket);
        return;
    };
    let guest = SocketAddrV4::new(ip, guest_port);
    let connecting = match stack.connect(guest, CONNECT_TIMEOUT.into()) {
        Ok(connecting) => connecting,
        Err(err) => {
            tracing::info!(%peer, %guest, error = %err, "forward: cannot connect; reset");
            reset(socket);
            return;
        }
    };
    let stream = match connecting.await {
        Ok(stream) => stream,
        Err(err) => {
            tracing::info!(%peer, %guest, error = %err, "forward: the guest did not take it; reset");
            reset(socket);
            return;
        }
    };
    match splice(socket.compat(), stream, timer, HALF_CLOSE_LINGER).await {
        Ok((sent, received)) => tracing::debug!(%peer, %guest, sent, received, "forward: ended"),
        Err(err) => tracing::debug!(%peer, %guest, error = %err, "forward: failed"),
    }
}

/// Closes a host connection with RST, so the client sees at once that nothing answered.
fn reset(socket: tokio::net::TcpStream) {
    // Deprecated for the blocking close a non-zero linger causes; zero resets at once.
    #[allow(deprecated)]
    let _ = socket.set_linger(Some(Duration::ZERO));
    drop(socket);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_parse_with_and_without_a_host() {
        let forward: Forward = "8080=80".parse().unwrap();
        assert_eq!(forward.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(forward.guest_port, 80);
        let forward: Forward = "0.0.0.0:2222=22".parse().unwrap();
        assert_eq!(forward.listen, "0.0.0.0:2222".parse().unwrap());
        let forward: Forward = "[::1]:8000=8000".parse().unwrap();
        assert_eq!(forward.listen, "[::1]:8000".parse().unwrap());
        for (bad, why) in [
            ("8080", "no `=`"),
            ("8080=0", "guest port 0"),
            ("8080=http", "not a guest port"),
            ("host:80=80", "not a host port"),
            ("70000=80", "not a host port"),
        ] {
            let err = bad.parse::<Forward>().unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
