//! A real `redis-server` on a free loopback port, for tests of state shared across replicas,
//! with the failures a deployment sees: a restart on the same port, a server that stops
//! answering ([`RedisServer::pause`]) and a failover that leaves old connections silent
//! ([`SilentFailover`]).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `redis-server` bound to 127.0.0.1, with no persistence. Killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    extra: Vec<String>,
}

fn binary() -> String {
    std::env::var("PORTCULLIS_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

impl RedisServer {
    /// Starts `redis-server` (from `$PORTCULLIS_REDIS_SERVER` or `PATH`) and waits until it
    /// accepts connections.
    ///
    /// # Panics
    /// Panics with a clear message when redis-server is not installed or does not start: the
    /// test script (`scripts/test-all.sh`) installs it.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts `redis-server` with extra command-line options, such as
    /// `["--maxmemory-policy", "allkeys-lru"]`.
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub fn start_with(extra: &[&str]) -> Self {
        let mut server = Self {
            child: None,
            port: 0,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        for _ in 0..5 {
            server.port = crate::free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on a free loopback port");
    }

    /// Spawns the server on `self.port` and waits until it accepts connections.
    fn spawn(&mut self) -> bool {
        let bin = binary();
        let port = self.port.to_string();
        let mut child = Command::new(&bin)
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port,
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin}: {e} (install redis-server, see scripts/test-all.sh)")
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break; // exited: port taken
            }
            // Another test's server may hold the port while ours fails to bind: only a
            // server that reports our child's pid is ours.
            if pid_listening_on(self.port) == Some(child.id()) {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Kills the server (as a crash would: no shutdown, every connection reset). Its data is
    /// gone: it runs without persistence.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a fresh server on the same port (stopping the running one first), as a restart
    /// or a failover behind the same address does, and waits until it accepts connections.
    ///
    /// # Panics
    /// When the port was taken by someone else in the meantime, or redis-server fails.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// Freezes the server (`SIGSTOP`): connections stay open and requests are accepted by the
    /// kernel but never answered, as with a hung or partitioned primary.
    ///
    /// # Panics
    /// When the server is stopped or `kill` fails.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a server frozen by [`pause`](Self::pause) (`SIGCONT`).
    ///
    /// # Panics
    /// When the server is stopped or `kill` fails.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self
            .child
            .as_ref()
            .expect("redis-server is not running")
            .id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

/// The `process_id` reported by `INFO server` from whatever answers on `127.0.0.1:port`.
fn pid_listening_on(port: u16) -> Option<u32> {
    let mut stream =
        TcpStream::connect_timeout(&crate::loopback(port), Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        .ok()?;
    let mut answer = String::new();
    let mut buf = [0u8; 4096];
    // Read until the process_id line is complete (the bulk reply is a few kilobytes).
    loop {
        if let Some(rest) = answer.split("process_id:").nth(1)
            && let Some((pid, _)) = rest.split_once("\r\n")
        {
            return pid.trim().parse().ok();
        }
        let n = stream.read(&mut buf).ok()?;
        if n == 0 || answer.len() > 64 * 1024 {
            return None;
        }
        answer.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused server would ignore nothing but SIGKILL anyway; thaw it to be tidy.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.stop();
    }
}

/// One connection through the proxy: both sockets, and whether it was silenced.
struct Link {
    client: TcpStream,
    upstream: TcpStream,
    silent: Arc<AtomicBool>,
}

/// A TCP forwarder on a free loopback port in front of a [`RedisServer`], that can make every
/// connection it carries go silent at once (bytes swallowed both ways, nothing closed) while
/// new connections are forwarded as before: what a client sees when the primary it talked
/// to drops off the network and its address now leads to a new one. Only reconnecting
/// recovers; a client that waits on its old connection hangs.
///
/// Threads and sockets stop when it is dropped.
pub struct SilentFailover {
    port: u16,
    links: Arc<Mutex<Vec<Link>>>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for SilentFailover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SilentFailover")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Copies `from` to `to` until either closes; swallows the bytes once `silent` is set.
fn pump(mut from: TcpStream, mut to: TcpStream, silent: Arc<AtomicBool>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if silent.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl SilentFailover {
    /// Forwards a free loopback port to `127.0.0.1:upstream_port`.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let links: Arc<Mutex<Vec<Link>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (links2, stop2) = (links.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(upstream) = TcpStream::connect(crate::loopback(upstream_port)) else {
                    continue; // dropping `client` closes it, as a refused connection would
                };
                let silent = Arc::new(AtomicBool::new(false));
                let (Ok(c2), Ok(u2), Ok(c3), Ok(u3)) = (
                    client.try_clone(),
                    upstream.try_clone(),
                    client.try_clone(),
                    upstream.try_clone(),
                ) else {
                    continue;
                };
                let s = silent.clone();
                std::thread::spawn(move || pump(c2, u2, s));
                let s = silent.clone();
                std::thread::spawn(move || pump(u3, c3, s));
                links2.lock().unwrap_or_else(|p| p.into_inner()).push(Link {
                    client,
                    upstream,
                    silent,
                });
            }
        });
        Self { port, links, stop }
    }

    /// Silences every connection open now; later connections are forwarded normally.
    pub fn silence_open_connections(&self) {
        for link in self.links.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            link.silent.store(true, Ordering::SeqCst);
        }
    }

    /// How many connections were opened through the proxy so far.
    pub fn connections(&self) -> usize {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// `redis://127.0.0.1:PORT/` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for SilentFailover {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(crate::loopback(self.port)); // wakes the accept loop
        for link in self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = link.client.shutdown(Shutdown::Both);
            let _ = link.upstream.shutdown(Shutdown::Both);
        }
    }
}
