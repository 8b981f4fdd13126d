//! A minimal HTTP/1.1 client for the plain-HTTP loopback servers of the rig
//! (the registry, the release server). One request per connection
//! (`Connection: close`), bodies sent with a Content-Length, responses read by
//! Content-Length, chunked encoding or end of stream. It trusts the servers:
//! they are ours, on 127.0.0.1.

use anyhow::{bail, Context, Result};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long a request may wait for the other side before giving up.
const IO_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest header block accepted from a server.
const MAX_HEAD: usize = 64 << 10;

/// A request body.
pub enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// A stream of exactly `len` bytes (big blobs are sent from files).
    Reader(Box<dyn Read + 'a>, u64),
}

/// A response with its whole body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names are lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text, for error messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An `http://host:port/path?query` URL split into its address and target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `host:port`.
    pub authority: String,
    /// Path and query, starting with `/`.
    pub target: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("only http:// URLs are supported: {url}"))?;
        let (authority, target) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            bail!("no host in URL {url}");
        }
        let authority = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Url {
            authority,
            target: target.to_string(),
        })
    }

    /// Resolves a `Location` header against this URL: absolute URLs stand,
    /// `/path` keeps this URL's authority.
    pub fn join(&self, location: &str) -> Result<Url> {
        if location.starts_with("http://") {
            Url::parse(location)
        } else if location.starts_with('/') {
            Ok(Url {
                authority: self.authority.clone(),
                target: location.to_string(),
            })
        } else {
            bail!("unsupported Location {location:?}")
        }
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.target)
    }
}

/// Sends one request and reads the whole response.
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Body) -> Result<Response> {
    let parsed = Url::parse(url)?;
    send(method, &parsed, headers, body).with_context(|| format!("{method} {url}"))
}

/// `GET url` with extra headers.
pub fn get(url: &str, headers: &[(&str, &str)]) -> Result<Response> {
    request("GET", url, headers, Body::Empty)
}

fn send(method: &str, url: &Url, headers: &[(&str, &str)], body: Body) -> Result<Response> {
    let addr = url
        .authority
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("cannot resolve {}", url.authority))?;
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;

    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: airgap-testbed\r\n",
        url.target, url.authority
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let len = match &body {
        Body::Empty => None,
        Body::Bytes(b) => Some(b.len() as u64),
        Body::Reader(_, n) => Some(*n),
    };
    if let Some(n) = len {
        head.push_str(&format!("Content-Length: {n}\r\n"));
    } else if method == "POST" || method == "PUT" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");

    let mut writer = io::BufWriter::with_capacity(256 << 10, &stream);
    writer.write_all(head.as_bytes())?;
    match body {
        Body::Empty => {}
        Body::Bytes(b) => writer.write_all(b)?,
        Body::Reader(mut r, n) => {
            let copied = io::copy(&mut (&mut r).take(n), &mut writer)?;
            if copied != n {
                bail!("request body ended after {copied} of {n} bytes");
            }
        }
    }
    writer.flush()?;
    drop(writer);

    let mut reader = BufReader::new(&stream);
    read_response(&mut reader, method == "HEAD")
}

fn read_response(reader: &mut impl BufRead, head_only: bool) -> Result<Response> {
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    let mut total = status_line.len();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line)?;
        total += n;
        if n == 0 || total > MAX_HEAD {
            bail!("truncated or oversized response head");
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(resp);
    }
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        resp.body = read_chunked(reader)?;
    } else if let Some(len) = resp.header("content-length") {
        let len: u64 = len.parse().context("bad Content-Length")?;
        reader.take(len).read_to_end(&mut resp.body)?;
        if resp.body.len() as u64 != len {
            bail!(
                "response body ended after {} of {len} bytes",
                resp.body.len()
            );
        }
    } else {
        reader.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

fn read_chunked(reader: &mut impl BufRead) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let size_text = line.trim().split(';').next().unwrap_or("");
        let size = u64::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {line:?}"))?;
        if size == 0 {
            // Trailers, then the final empty line.
            loop {
                let mut t = String::new();
                if reader.read_line(&mut t)? == 0 || t.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let before = body.len();
        reader.take(size).read_to_end(&mut body)?;
        if (body.len() - before) as u64 != size {
            bail!("chunk ended early");
        }
        let mut crlf = String::new();
        reader.read_line(&mut crlf)?;
    }
}

/// Encodes `user:password` for an `Authorization: Basic` header.
pub fn basic_auth(user: &str, password: &str) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}");
    let mut out = String::from("Basic ");
    for chunk in input.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = Url::parse("http://127.0.0.1:5000/v2/a/blobs/uploads/x?_state=1").unwrap();
        assert_eq!(u.authority, "127.0.0.1:5000");
        assert_eq!(u.target, "/v2/a/blobs/uploads/x?_state=1");
        assert_eq!(
            u.join("/v2/b").unwrap().to_string(),
            "http://127.0.0.1:5000/v2/b"
        );
        assert_eq!(Url::parse("http://h").unwrap().to_string(), "http://h:80/");
        assert!(Url::parse("https://h/").is_err());
    }

    #[test]
    fn reads_chunked_and_sized_bodies() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let r = read_response(&mut &raw[..], false).unwrap();
        assert_eq!(r.body, b"abcde");
        let raw = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nX-A: b\r\n\r\nnoEXTRA";
        let r = read_response(&mut &raw[..], false).unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.header("x-a")),
            (404, &b"no"[..], Some("b"))
        );
    }

    #[test]
    fn encodes_basic_auth() {
        assert_eq!(basic_auth("user", "pass"), "Basic dXNlcjpwYXNz");
        assert_eq!(basic_auth("a", "bc"), "Basic YTpiYw==");
        assert_eq!(basic_auth("ab", "c"), "Basic YWI6Yw==");
    }
}
