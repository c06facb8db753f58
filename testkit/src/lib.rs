//! Unpublished test helpers: CA hierarchies minted at test time, TLS servers on loopback, a
//! real `redis-server` on a free port, and a legacy-TLS server made by the `openssl` binary.
//!
//! Everything here talks only to 127.0.0.1 and stops by itself (servers stop when dropped).

pub mod legacy;
pub mod pki;
pub mod redis;
pub mod server;
pub mod subscriber;

use std::net::{SocketAddr, TcpListener};

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
///
/// # Panics
/// Panics when the OS has no free port to give (a broken test machine).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Returns `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Installs aws-lc-rs as the process-wide default rustls provider (idempotent).
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
