//! The services behind the virtual network's addresses: which TCP listeners exist and which
//! proxy entry point serves each. Shared by the native runner and the browser build.

use std::net::Ipv4Addr;
use std::rc::Rc;

use futures::future::LocalBoxFuture;
use http_proxy::{Mode, Proxy};
use net_stack::{ListenAddr, ListenError, Stack, TcpListener};

/// Spawns a task on the embedder's single-threaded executor.
pub type Spawner = Rc<dyn Fn(LocalBoxFuture<'static, ()>)>;

/// Opens the proxy's listeners on `stack` and spawns their accept loops with `spawn`.
///
/// Port 80 of `proxy_ip` is the plain forward proxy (`http_proxy`). Every connection is
/// served on its own task.
pub fn start(stack: &Stack, proxy: Rc<Proxy>, proxy_ip: Ipv4Addr, spawn: Spawner) -> Result<(), ListenError> {
    let listener = stack.listen(ListenAddr::Ip(proxy_ip), 80)?;
    spawn(Box::pin(accept_loop(listener, proxy, Mode::Forward, spawn.clone())));
    Ok(())
}

async fn accept_loop(listener: TcpListener, proxy: Rc<Proxy>, mode: Mode, spawn: Spawner) {
    loop {
        let stream = listener.accept().await;
        let peer = stream.peer_addr();
        let local = stream.local_addr();
        tracing::debug!(%peer, %local, "guest connection");
        let proxy = proxy.clone();
        let mode = mode.clone();
        spawn(Box::pin(async move {
            if let Err(err) = proxy.serve(stream, mode).await {
                tracing::debug!(%peer, %local, error = %err, "guest connection ended with an error");
            }
        }));
    }
}
