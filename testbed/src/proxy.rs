//! A loopback HTTP/1.1 proxy in front of a server of the rig (the registry),
//! for tests of broken downloads and flaky registries: it forwards each
//! request on a connection of its own, records what was asked (path,
//! `Range`) and how many body bytes went back, and can inject faults into
//! the requests whose target contains a given string: cut one response off
//! after N body bytes, answer with an error status instead of forwarding,
//! stall (pass N body bytes, then send nothing until the client gives up),
//! or serve the wrong blob with a 200 (another path's body, or the right
//! body with one byte flipped), or answer with a huge body of its own.
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
    /// Whether the proxy stalled this response (and then closed it).
    pub stalled: bool,
    /// Whether the proxy served another body than the one asked for.
    pub replaced: bool,
}

/// A stall to inject: pass `after` body bytes, then nothing for `hold`
/// (or until the client closes), then close.
struct Stall {
    needle: String,
    after: u64,
    hold: Duration,
    /// How many more responses to stall.
    times: u32,
}

/// How the proxy serves the wrong blob.
#[derive(Debug, Clone)]
enum Wrong {
    /// Forwards this other target instead (another blob's body, its size).
    Target(String),
    /// Forwards the right target but flips the middle byte of the body
    /// (same size, different digest).
    Flip,
}

struct Swap {
    needle: String,
    wrong: Wrong,
    times: u32,
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
    stall: Mutex<Option<Stall>>,
    swap: Mutex<Option<Swap>>,
    /// (substring of the target, body bytes, whether to send Content-Length).
    huge: Mutex<Option<(String, u64, bool)>>,
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

    /// Stalls the next `times` successful responses to GETs whose target
    /// contains `needle` (`u32::MAX`: all of them): the head and `after`
    /// body bytes go through, then nothing for `hold` or until the client
    /// closes the connection, whichever comes first; then the proxy closes
    /// it. A client whose read timeout is shorter than `hold` times out.
    pub fn stall(&self, needle: &str, after: u64, times: u32, hold: Duration) {
        *self.state.stall.lock().unwrap() = Some(Stall {
            needle: needle.to_string(),
            after,
            hold,
            times,
        });
    }

    /// Answers the next `times` GETs whose target contains `needle` with the
    /// upstream's answer to `other` (path and query) instead: another blob,
    /// served with a 200 as if it were the one asked for.
    pub fn serve_instead(&self, needle: &str, other: &str, times: u32) {
        *self.state.swap.lock().unwrap() = Some(Swap {
            needle: needle.to_string(),
            wrong: Wrong::Target(other.to_string()),
            times,
        });
    }

    /// Flips the middle byte of the body of the next `times` successful
    /// responses to GETs whose target contains `needle`: the right size, the
    /// wrong digest.
    pub fn corrupt(&self, needle: &str, times: u32) {
        *self.state.swap.lock().unwrap() = Some(Swap {
            needle: needle.to_string(),
            wrong: Wrong::Flip,
            times,
        });
    }

    /// Answers every GET whose target contains `needle` with a 200 and
    /// `size` bytes of JSON whitespace of its own (a manifest media type),
    /// with a `Content-Length` when `announce`, else delimited by closing;
    /// the log counts the bytes the client took before it hung up.
    pub fn serve_huge(&self, needle: &str, size: u64, announce: bool) {
        *self.state.huge.lock().unwrap() = Some((needle.to_string(), size, announce));
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
            stalled: false,
            replaced: false,
        });
        return Ok(());
    }
    let huge = match state.huge.lock().unwrap().as_ref() {
        Some((needle, size, announce)) if method == "GET" && target.contains(needle.as_str()) => {
            Some((*size, *announce))
        }
        _ => None,
    };
    if let Some((size, announce)) = huge {
        let mut client = client;
        let length = if announce {
            format!("Content-Length: {size}\r\n")
        } else {
            String::new()
        };
        write!(
            client,
            "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n\
             {length}Connection: close\r\n\r\n"
        )?;
        let chunk = [b' '; 64 << 10];
        let mut sent = 0u64;
        while sent < size {
            let n = chunk.len().min((size - sent) as usize);
            if client.write_all(&chunk[..n]).is_err() {
                break;
            }
            sent += n as u64;
        }
        let _ = client.shutdown(Shutdown::Write);
        state.log.lock().unwrap().push(Forwarded {
            method,
            target,
            range,
            status: 200,
            body_bytes: sent,
            cut: false,
            stalled: false,
            replaced: true,
        });
        return Ok(());
    }
    let wrong = if method == "GET" {
        let mut swap = state.swap.lock().unwrap();
        match swap.as_mut() {
            Some(s) if s.times > 0 && target.contains(s.needle.as_str()) => {
                s.times -= 1;
                Some(s.wrong.clone())
            }
            _ => None,
        }
    } else {
        None
    };
    let mut request = request;
    if let Some(Wrong::Target(other)) = &wrong {
        request[0] = format!("{method} {other} HTTP/1.1");
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
    let ok = method == "GET" && (status == 200 || status == 206);
    let stall = if ok {
        let mut stall = state.stall.lock().unwrap();
        match stall.as_mut() {
            Some(s) if s.times > 0 && target.contains(s.needle.as_str()) => {
                s.times -= 1;
                Some((s.after, s.hold))
            }
            _ => None,
        }
    } else {
        None
    };
    // The body offset whose byte is flipped.
    let flip_at = match (&wrong, ok) {
        (Some(Wrong::Flip), true) => Some(
            header(&response, "content-length")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                / 2,
        ),
        _ => None,
    };
    let stop_at = match (limit, stall) {
        (Some(l), Some((s, _))) => Some(l.min(s)),
        (l, s) => l.or(s.map(|(after, _)| after)),
    };
    let mut body_bytes = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    let head_only = method == "HEAD";
    let mut stalled = false;
    loop {
        if head_only {
            break;
        }
        let want = match stop_at {
            Some(l) if body_bytes >= l => {
                stalled = stall.is_some_and(|(after, _)| after == l);
                break;
            }
            Some(l) => ((l - body_bytes) as usize).min(buf.len()),
            None => buf.len(),
        };
        let n = server_reader.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        if let Some(at) = flip_at {
            if (body_bytes..body_bytes + n as u64).contains(&at) {
                buf[(at - body_bytes) as usize] ^= 0xff;
            }
        }
        client_w.write_all(&buf[..n])?;
        body_bytes += n as u64;
    }
    client_w.flush()?;
    if let (true, Some((_, hold))) = (stalled, stall) {
        hold_until_closed(&mut client_reader, hold);
    }
    let _ = client_w.shutdown(Shutdown::Both);
    state.log.lock().unwrap().push(Forwarded {
        method,
        target,
        range,
        status,
        body_bytes,
        cut: limit.is_some() && !stalled,
        stalled,
        replaced: wrong.is_some() && ok,
    });
    Ok(())
}

/// Sends nothing until the client closes its side (it timed out) or `hold`
/// has passed.
fn hold_until_closed(client: &mut BufReader<TcpStream>, hold: Duration) {
    let deadline = std::time::Instant::now() + hold;
    let _ = client
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(50)));
    let mut byte = [0u8; 1];
    while std::time::Instant::now() < deadline {
        match client.read(&mut byte) {
            // Closed by the client (or it sent a byte it should not have).
            Ok(_) => return,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
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

    #[test]
    fn stalls_and_serves_wrong_blobs() {
        let reg = Registry::start().unwrap();
        let bytes: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let blob = crate::image::Blob::from_bytes(bytes.clone());
        let other = crate::image::Blob::from_bytes(b"another blob".to_vec());
        assert!(reg.client().push_blob("p/q", &blob).unwrap());
        assert!(reg.client().push_blob("p/q", &other).unwrap());
        let proxy = Proxy::start(reg.addr()).unwrap();
        let path = format!("/v2/p/q/blobs/{}", blob.digest);
        let url = format!("{}{path}", proxy.url());

        // A stall held for less than the client's read timeout: the proxy
        // closes after it, short.
        proxy.stall(&blob.digest.hex(), 300, 1, Duration::from_millis(300));
        let started = std::time::Instant::now();
        assert!(http::get(&url, &[]).is_err(), "stalled, then closed short");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(http::get(&url, &[]).unwrap().body, bytes, "once only");

        proxy.corrupt(&blob.digest.hex(), 1);
        let flipped = http::get(&url, &[]).unwrap();
        assert_eq!(flipped.status, 200);
        assert_eq!(flipped.body.len(), bytes.len());
        let differ: Vec<usize> = (0..bytes.len())
            .filter(|&i| flipped.body[i] != bytes[i])
            .collect();
        assert_eq!(differ, [bytes.len() / 2]);

        proxy.serve_instead(
            &blob.digest.hex(),
            &format!("/v2/p/q/blobs/{}", other.digest),
            1,
        );
        let swapped = http::get(&url, &[]).unwrap();
        assert_eq!(
            (swapped.status, swapped.body.as_slice()),
            (200, &b"another blob"[..])
        );
        assert_eq!(http::get(&url, &[]).unwrap().body, bytes);

        let seen = proxy.forwarded_matching(&path);
        // Logged as they finish: a connection's log may come after the
        // next one's.
        let mut flags: Vec<(bool, bool, u64)> = seen
            .iter()
            .map(|f| (f.stalled, f.replaced, f.body_bytes))
            .collect();
        flags.sort();
        let n = bytes.len() as u64;
        assert_eq!(
            flags,
            [
                (false, false, n),
                (false, false, n),
                (false, true, 12),
                (false, true, n),
                (true, false, 300),
            ]
        );
    }
}
