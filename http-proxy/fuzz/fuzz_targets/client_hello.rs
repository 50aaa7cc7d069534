//! The proxy's TLS entry the way tls.rs uses it: rustls' `Acceptor` reads the ClientHello, the
//! SNI becomes the leaf's host (mitm-ca issues it) and, inside a transparent tunnel, the
//! origin's host (`Host::parse`); the rest of the input continues the handshake.
#![no_main]

use std::io::Read;

use http_proxy::target::Host;
use http_proxy_fuzz::issuer;
use libfuzzer_sys::fuzz_target;
use rustls::server::Acceptor;

fuzz_target!(|data: &[u8]| {
    let issuer = issuer();
    let mut reader = data;
    let mut acceptor = Acceptor::default();
    let accepted = loop {
        match acceptor.read_tls(&mut reader) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted,
            Ok(None) => continue,
            Err(_) => return,
        }
    };
    let sni = accepted.client_hello().server_name().map(str::to_string);
    let host = sni.as_deref().unwrap_or("192.168.127.253");
    if let Ok(parsed) = Host::parse(host) {
        let _ = parsed.bare();
    }
    let _ = issuer.issue(host);
    let Ok(mut conn) = accepted.into_connection(issuer.server_config(Some(host))) else {
        return;
    };
    // Whatever follows the ClientHello goes into the handshake.
    let mut out = Vec::new();
    let _ = conn.write_tls(&mut out);
    while !reader.is_empty() {
        match conn.read_tls(&mut reader) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if conn.process_new_packets().is_err() {
            let _ = conn.write_tls(&mut out);
            break;
        }
        let mut plain = [0u8; 1024];
        let _ = conn.reader().read(&mut plain);
        out.clear();
        let _ = conn.write_tls(&mut out);
    }
});
