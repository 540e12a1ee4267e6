//! A switchable TCP proxy on loopback in front of a store: forwards, refuses,
//! answers 500/503, stalls, or cuts an upload mid-body, as the test says,
//! and counts the connections it spoiled.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the proxy does with the next connections.
#[derive(Debug, Clone, PartialEq)]
pub enum ProxyMode {
    /// Forward everything.
    Up,
    /// Accept and drop at once: the store refuses connections.
    Down,
    /// Answer every request with this status and an S3 error body (e.g.
    /// 500, or 503 SlowDown), then close.
    Status(u16),
    /// Wait this long before forwarding each connection.
    Slow(Duration),
    /// Forward the request head and this many body bytes, then cut both
    /// sides: the connection drops mid-upload.
    CutAfter(usize),
}

/// A switchable TCP proxy on loopback; counts the connections it spoiled.
pub struct StoreProxy {
    pub port: u16,
    mode: Arc<std::sync::Mutex<ProxyMode>>,
    pub spoiled: Arc<AtomicU64>,
}

impl StoreProxy {
    pub fn start(upstream: u16, mode: ProxyMode) -> StoreProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mode = Arc::new(std::sync::Mutex::new(mode));
        let spoiled = Arc::new(AtomicU64::new(0));
        let (m, sp) = (mode.clone(), spoiled.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(client) = conn else { continue };
                let mode = m.lock().unwrap().clone();
                let sp = sp.clone();
                std::thread::spawn(move || proxy_one(client, upstream, mode, sp));
            }
        });
        StoreProxy {
            port,
            mode,
            spoiled,
        }
    }

    pub fn set(&self, mode: ProxyMode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
}

fn proxy_one(mut client: TcpStream, upstream: u16, mode: ProxyMode, spoiled: Arc<AtomicU64>) {
    match mode {
        ProxyMode::Down => {
            spoiled.fetch_add(1, Ordering::Relaxed);
        }
        ProxyMode::Status(code) => {
            // Read the request head so the client sees a response, not a reset.
            let mut buf = [0u8; 16384];
            let _ = client.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = client.read(&mut buf);
            let (reason, s3code) = match code {
                503 => ("Slow Down", "SlowDown"),
                _ => ("Internal Server Error", "InternalError"),
            };
            let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{s3code}</Code><Message>injected by the test</Message></Error>");
            let _ = write!(
                client,
                "HTTP/1.1 {code} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            spoiled.fetch_add(1, Ordering::Relaxed);
        }
        ProxyMode::Slow(d) => {
            std::thread::sleep(d);
            forward(client, upstream);
        }
        ProxyMode::CutAfter(n) => {
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                return;
            };
            let mut buf = vec![0u8; 65536];
            let mut head = Vec::new();
            let _ = client.set_read_timeout(Some(Duration::from_secs(2)));
            // Forward until the head plus n body bytes have passed, then cut.
            while let Ok(k) = client.read(&mut buf) {
                if k == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..k]);
                if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    let is_put = head.starts_with(b"PUT") || head.starts_with(b"POST");
                    if !is_put {
                        // Not an upload: answer this one request, then close,
                        // so the client's next request (maybe a PUT) comes
                        // on a new connection that can be cut.
                        let _ = server.write_all(&head);
                        let _ = server.shutdown(std::net::Shutdown::Write);
                        let _ = std::io::copy(&mut server, &mut client);
                        let _ = client.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    let upto = (end + 4 + n).min(head.len());
                    let _ = server.write_all(&head[..upto]);
                    if head.len() >= end + 4 + n {
                        break;
                    }
                }
            }
            spoiled.fetch_add(1, Ordering::Relaxed);
            let _ = server.shutdown(std::net::Shutdown::Both);
            let _ = client.shutdown(std::net::Shutdown::Both);
        }
        ProxyMode::Up => forward(client, upstream),
    }
}

fn forward(client: TcpStream, upstream: u16) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let c2 = client.try_clone().unwrap();
    let s2 = server.try_clone().unwrap();
    std::thread::spawn(move || pipe(s2, c2));
    pipe(client, server);
}
