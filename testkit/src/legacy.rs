//! A TLS server that speaks only an old protocol version (TLS 1.0 or 1.1), run by the
//! `openssl s_server` binary, so clients can be shown to refuse it.

use std::io::Write as _;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pki::Issued;

/// An old TLS protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegacyVersion {
    /// TLS 1.0.
    Tls10,
    /// TLS 1.1.
    Tls11,
}

/// A running `openssl s_server` limited to one legacy protocol version. Killed when dropped.
#[derive(Debug)]
pub struct LegacyTlsServer {
    child: Child,
    port: u16,
    _dir: TempDir,
}

#[derive(Debug)]
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl LegacyTlsServer {
    /// Starts `openssl s_server` with `leaf` (its chain is `chain_pem`), accepting only `version`.
    ///
    /// # Panics
    /// Panics when the openssl binary is missing or does not start.
    pub fn start(version: LegacyVersion, leaf: &Issued, chain_pem: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-legacy-{}-{}",
            std::process::id(),
            crate::free_port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let mut f = std::fs::File::create(&cert).expect("cert file");
        f.write_all(leaf.cert_pem().as_bytes()).expect("write cert");
        f.write_all(chain_pem.as_bytes()).expect("write chain");
        std::fs::write(&key, leaf.key_pem()).expect("write key");
        let flag = match version {
            LegacyVersion::Tls10 => "-tls1",
            LegacyVersion::Tls11 => "-tls1_1",
        };
        let dir = TempDir(dir);
        for _ in 0..5 {
            let port = crate::free_port();
            let mut child = Command::new("openssl")
                .args(["s_server", "-quiet", "-www", flag])
                .args(["-cipher", "DEFAULT:@SECLEVEL=0"])
                .args(["-accept", &format!("127.0.0.1:{port}")])
                .arg("-cert")
                .arg(&cert)
                .arg("-key")
                .arg(&key)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("cannot start openssl s_server (install openssl)");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: port taken, try another
                }
                if TcpStream::connect(crate::loopback(port)).is_ok() {
                    return Self {
                        child,
                        port,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("openssl s_server did not start");
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for LegacyTlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
