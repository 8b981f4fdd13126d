//! A loopback HTTP/1.1 proxy in front of a server of the rig (the registry),
//! for tests of broken downloads: it forwards each request on a connection
//! of its own, records what was asked (path, `Range`) and how many body
//! bytes went back, and can cut one response off after N body bytes, once,
//! or answer requests with an error status instead of forwarding them.
//!
//! One request per connection: it tells both sides `Connection: close`. It
//! trusts both sides: they are the test and the rig's own server.

use anyhow::{Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One request the proxy forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    pub method: String,
    /// Path and query.
    pub target: String,
    /// The request's `Range` header.
    pub range: Option<String>,
    /// The upstream's status.
    pub status: u16,
    /// Body bytes passed back to the client.
    pub body_bytes: u64,
    /// Whether the proxy cut this response off.
    pub cut: bool,
}

#[derive(Default)]
struct State {
    stop: AtomicBool,
    /// Connections accepted and not yet logged.
    open: AtomicUsize,
    /// (substring of the target, body bytes to pass before closing).
    cut: Mutex<Option<(String, u64)>>,
    /// (substring of the target, status to answer, how many more times).
    fail: Mutex<Option<(String, u16, u32)>>,
    log: Mutex<Vec<Forwarded>>,
}

/// A running proxy; stopped on drop.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Forwards `127.0.0.1:<free port>` to `upstream` (`127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> Result<Proxy> {
        let upstream: SocketAddr = upstream
            .parse()
            .with_context(|| format!("proxy upstream {upstream:?}"))?;
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the proxy")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let st = state.clone();
        let accept = std::thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if st.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let st = st.clone();
                    st.open.fetch_add(1, Ordering::SeqCst);
                    std::thread::spawn(move || {
                        let _ = forward(conn, upstream, &st);
                        st.open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            })?;
        Ok(Proxy {
            addr,
            state,
            accept: Some(accept),
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts the next response to a request whose target contains `needle`
    /// off after `after` body bytes (once).
    pub fn cut_once(&self, needle: &str, after: u64) {
        *self.state.cut.lock().unwrap() = Some((needle.to_string(), after));
    }

    /// Answers the next `times` requests whose target contains `needle`
    /// with `status` (an empty body) instead of forwarding them.
    pub fn fail(&self, needle: &str, status: u16, times: u32) {
        *self.state.fail.lock().unwrap() = Some((needle.to_string(), status, times));
    }

    /// Every request forwarded so far, in the order they finished (after
    /// waiting, up to 5 s, for the connections still open).
    pub fn forwarded(&self) -> Vec<Forwarded> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.state.open.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.state.log.lock().unwrap().clone()
    }

    /// The requests whose target contains `needle`.
    pub fn forwarded_matching(&self, needle: &str) -> Vec<Forwarded> {
        self.forwarded()
            .into_iter()
            .filter(|f| f.target.contains(needle))
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Reads a head (through the empty line) from `reader`.
fn read_head(reader: &mut impl BufRead) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            anyhow::bail!("connection closed in the head");
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            return Ok(lines);
        }
        lines.push(line);
    }
}

fn header<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    lines.iter().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Rewrites a head with `Connection: close`.
fn closing(lines: &[String]) -> String {
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        let is_conn = i > 0
            && l.split_once(':').is_some_and(|(k, _)| {
                let k = k.trim();
                k.eq_ignore_ascii_case("connection") || k.eq_ignore_ascii_case("keep-alive")
            });
        if !is_conn {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

fn forward(client: TcpStream, upstream: SocketAddr, state: &State) -> Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut client_reader = BufReader::new(client.try_clone()?);
    let request = read_head(&mut client_reader)?;
    let mut parts = request[0].split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let range = header(&request, "range").map(str::to_string);
    let body_len: u64 = header(&request, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);

    let failing = {
        let mut fail = state.fail.lock().unwrap();
        match fail.as_mut() {
            Some((needle, status, times)) if *times > 0 && target.contains(needle.as_str()) => {
                *times -= 1;
                Some(*status)
            }
            _ => None,
        }
    };
    if let Some(status) = failing {
        let mut client = client;
        write!(
            client,
            "HTTP/1.1 {status} Injected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        client.flush()?;
        state.log.lock().unwrap().push(Forwarded {
            method,
            target,
            range,
            status,
            body_bytes: 0,
            cut: false,
        });
        return Ok(());
    }
    let server = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))?;
    server.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut server_w = server.try_clone()?;
    server_w.write_all(closing(&request).as_bytes())?;
    std::io::copy(&mut (&mut client_reader).take(body_len), &mut server_w)?;
    server_w.flush()?;

    let mut server_reader = BufReader::new(server);
    let response = read_head(&mut server_reader)?;
    let status = response[0]
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut client_w = client;
    client_w.write_all(closing(&response).as_bytes())?;

    let limit = {
        let mut cut = state.cut.lock().unwrap();
        match cut.as_ref() {
            Some((needle, after)) if target.contains(needle.as_str()) && status == 200 => {
                let after = *after;
                *cut = None;
                Some(after)
            }
            _ => None,
        }
    };
    let mut body_bytes = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    let head_only = method == "HEAD";
    loop {
        if head_only {
            break;
        }
        let want = match limit {
            Some(l) if body_bytes >= l => break,
            Some(l) => ((l - body_bytes) as usize).min(buf.len()),
            None => buf.len(),
        };
        let n = server_reader.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        client_w.write_all(&buf[..n])?;
        body_bytes += n as u64;
    }
    client_w.flush()?;
    let _ = client_w.shutdown(Shutdown::Both);
    state.log.lock().unwrap().push(Forwarded {
        method,
        target,
        range,
        status,
        body_bytes,
        cut: limit.is_some(),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{http, Registry};

    #[test]
    fn forwards_counts_and_cuts_once() {
        let reg = Registry::start().unwrap();
        let bytes: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let blob = crate::image::Blob::from_bytes(bytes.clone());
        assert!(reg.client().push_blob("p/q", &blob).unwrap());
        let proxy = Proxy::start(reg.addr()).unwrap();
        let path = format!("/v2/p/q/blobs/{}", blob.digest);
        let url = format!("{}{path}", proxy.url());
        proxy.cut_once(&blob.digest.hex(), 100);
        assert!(http::get(&url, &[]).is_err(), "cut off short");
        let whole = http::get(&url, &[]).unwrap();
        assert_eq!(whole.status, 200);
        assert_eq!(whole.body, bytes);
        let part = http::get(&url, &[("Range", "bytes=100-")]).unwrap();
        assert_eq!(part.status, 206);
        assert_eq!(part.body, &bytes[100..]);
        let seen = proxy.forwarded_matching(&path);
        assert_eq!(seen.len(), 3);
        assert!(seen[0].cut && seen[0].body_bytes == 100);
        assert_eq!(seen[2].range.as_deref(), Some("bytes=100-"));
        assert_eq!(seen[2].body_bytes, bytes.len() as u64 - 100);
    }
}
