//! The thread-per-connection loopback server under the rig's small HTTP
//! servers (the release server, the token server): it accepts on a listener
//! and runs the server's handler on a thread of its own for each connection;
//! stopping wakes the accept, shuts every open connection down and joins
//! every thread, so nothing outlives the server. [`read_head`] reads the
//! request line and headers those servers need.

use anyhow::Result;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Open connections, shut down on stop.
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
}

/// A running accept loop. Stopped on drop.
pub struct ConnServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<Vec<JoinHandle<()>>>>,
}

impl ConnServer {
    /// Serves each connection of `listener` with `handle` on a thread named
    /// `<name>-conn`; the connection's write side is shut when it returns.
    pub fn start<F>(listener: TcpListener, name: &str, handle: F) -> Result<ConnServer>
    where
        F: Fn(&TcpStream) + Send + Sync + 'static,
    {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (sh, conn_name) = (shared.clone(), format!("{name}-conn"));
        let handle = Arc::new(handle);
        let accept = std::thread::Builder::new()
            .name(format!("{name}-accept"))
            .spawn(move || accept_loop(listener, &conn_name, sh, handle))?;
        Ok(ConnServer {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes open connections and joins every thread.
    /// Idempotent.
    pub fn stop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for conn in self.shared.conns.lock().unwrap().values() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        if let Ok(handles) = accept.join() {
            for h in handles {
                let _ = h.join();
            }
        }
    }
}

impl Drop for ConnServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop<F>(
    listener: TcpListener,
    conn_name: &str,
    shared: Arc<Shared>,
    handle: Arc<F>,
) -> Vec<JoinHandle<()>>
where
    F: Fn(&TcpStream) + Send + Sync + 'static,
{
    let mut handles: Vec<JoinHandle<()>> = Vec::new();
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        handles.retain(|h| !h.is_finished());
        let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        if let Ok(clone) = stream.try_clone() {
            shared.conns.lock().unwrap().insert(id, clone);
        }
        let (sh, handle) = (shared.clone(), handle.clone());
        let spawned = std::thread::Builder::new()
            .name(conn_name.to_string())
            .spawn(move || {
                handle(&stream);
                let _ = stream.shutdown(Shutdown::Write);
                sh.conns.lock().unwrap().remove(&id);
            });
        if let Ok(h) = spawned {
            handles.push(h);
        }
    }
    handles
}

/// A request's first line and headers.
#[derive(Debug, Default)]
pub struct RequestHead {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// (name, value), as sent, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a request's head (at most 16 KiB, waiting at most 10 s for it);
/// the body, if any, is left unread.
pub fn read_head(stream: &TcpStream) -> io::Result<RequestHead> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream).take(16 << 10);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let mut head = RequestHead {
        method: parts.next().unwrap_or("").to_string(),
        target: parts.next().unwrap_or("").to_string(),
        headers: Vec::new(),
    };
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            head.headers
                .push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(head)
}
