//! A stand-in for the k3s release download site: a tiny static file server on
//! a loopback port, and the asset layouts it serves (GitHub's
//! `<version>/<asset>` and the mirror's `k3s/<version with + as ->/<asset>`).
//!
//! The server speaks just enough HTTP/1.1 for a downloader: GET and HEAD,
//! percent-decoded paths (`%2B` is `+`), single byte ranges, one request per
//! connection. It counts what it serves, and can be told to fail a path, so
//! tests can check resumes, caching and retries. It serves only files under
//! its root and refuses `..`.

use crate::conn_server::{read_head, ConnServer};
use airgap_bundle::digest::Digest;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A failure to inject for one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer every request with this status and no body.
    Status(u16),
    /// Answer the next `times` requests with `status`, then serve normally.
    FailNext { status: u16, times: u32 },
    /// Announce the full length but close the connection after this many
    /// body bytes.
    TruncateAfter(u64),
}

#[derive(Default)]
struct State {
    bytes_served: AtomicU64,
    requests: Mutex<BTreeMap<String, u64>>,
    faults: Mutex<HashMap<String, Fault>>,
}

/// A running static file server. Stopped on drop.
pub struct ReleaseServer {
    addr: SocketAddr,
    root: PathBuf,
    state: Arc<State>,
    server: ConnServer,
}

impl ReleaseServer {
    /// Serves the files under `root` on `127.0.0.1:<free port>`.
    pub fn start(root: impl Into<PathBuf>) -> Result<ReleaseServer> {
        let root = root.into();
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the release server")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let (st, rt) = (state.clone(), root.clone());
        let server = ConnServer::start(listener, "release", move |stream| {
            let _ = serve_connection(stream, &rt, &st);
        })?;
        Ok(ReleaseServer {
            addr,
            root,
            state,
            server,
        })
    }

    /// `http://127.0.0.1:PORT` (the base URL of a GitHub-style release
    /// download path and of the mirror layout).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Body bytes sent so far, over all requests.
    pub fn bytes_served(&self) -> u64 {
        self.state.bytes_served.load(Ordering::SeqCst)
    }

    /// Requests seen for `path` (decoded, e.g. `/v1.20.6+k3s1/k3s`), any
    /// status.
    pub fn requests(&self, path: &str) -> u64 {
        let map = self.state.requests.lock().unwrap();
        map.get(path).copied().unwrap_or(0)
    }

    /// Requests per decoded path.
    pub fn all_requests(&self) -> BTreeMap<String, u64> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Forgets the counters.
    pub fn reset_counters(&self) {
        self.state.bytes_served.store(0, Ordering::SeqCst);
        self.state.requests.lock().unwrap().clear();
    }

    /// Injects a fault for requests of `path` (decoded).
    pub fn set_fault(&self, path: &str, fault: Fault) {
        self.state
            .faults
            .lock()
            .unwrap()
            .insert(path.to_string(), fault);
    }

    pub fn clear_faults(&self) {
        self.state.faults.lock().unwrap().clear();
    }

    /// Stops accepting, closes open connections and joins every thread.
    /// Idempotent.
    pub fn stop(&mut self) {
        self.server.stop();
    }
}

impl Drop for ReleaseServer {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Reply<'a> {
    stream: &'a TcpStream,
}

impl Reply<'_> {
    fn head(&mut self, status: u16, headers: &[(&str, String)]) -> io::Result<()> {
        let mut text = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        for (k, v) in headers {
            text.push_str(&format!("{k}: {v}\r\n"));
        }
        text.push_str("Connection: close\r\n\r\n");
        self.stream.write_all(text.as_bytes())
    }

    fn status_only(&mut self, status: u16) -> io::Result<()> {
        self.head(status, &[("Content-Length", "0".into())])
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn serve_connection(stream: &TcpStream, root: &Path, state: &State) -> io::Result<()> {
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    let head = read_head(stream)?;
    let range = head.header("range").map(str::to_string);
    let mut reply = Reply { stream };
    let (method, target) = (head.method.as_str(), head.target.as_str());
    if method.is_empty() || target.is_empty() {
        return reply.status_only(400);
    }
    let Some(path) = decode_path(target) else {
        return reply.status_only(400);
    };
    *state
        .requests
        .lock()
        .unwrap()
        .entry(path.clone())
        .or_default() += 1;
    if method != "GET" && method != "HEAD" {
        return reply.head(
            405,
            &[
                ("Allow", "GET, HEAD".into()),
                ("Content-Length", "0".into()),
            ],
        );
    }
    let mut truncate = None;
    {
        let mut faults = state.faults.lock().unwrap();
        match faults.get_mut(&path) {
            Some(Fault::Status(s)) => {
                let s = *s;
                drop(faults);
                return reply.status_only(s);
            }
            Some(Fault::FailNext { status, times }) if *times > 0 => {
                *times -= 1;
                let s = *status;
                drop(faults);
                return reply.status_only(s);
            }
            Some(Fault::TruncateAfter(n)) => truncate = Some(*n),
            _ => {}
        }
    }
    let file_path = root.join(path.trim_start_matches('/'));
    let file = match std::fs::File::open(&file_path) {
        Ok(f) if f.metadata()?.is_file() => f,
        _ => return reply.status_only(404),
    };
    let len = file.metadata()?.len();
    let (status, start, end) = match range.as_deref().map(|r| parse_range(r, len)) {
        None | Some(RangeSpec::Ignore) => (200, 0, len),
        Some(RangeSpec::Bytes(s, e)) => (206, s, e),
        Some(RangeSpec::Unsatisfiable) => {
            return reply.head(
                416,
                &[
                    ("Content-Range", format!("bytes */{len}")),
                    ("Content-Length", "0".into()),
                ],
            )
        }
    };
    let mut headers = vec![
        ("Content-Length", (end - start).to_string()),
        ("Content-Type", "application/octet-stream".to_string()),
        ("Accept-Ranges", "bytes".to_string()),
    ];
    if status == 206 {
        headers.push(("Content-Range", format!("bytes {start}-{}/{len}", end - 1)));
    }
    reply.head(status, &headers)?;
    if method == "HEAD" {
        return Ok(());
    }
    let mut file = file;
    file.seek(SeekFrom::Start(start))?;
    let send = truncate.map_or(end - start, |n| n.min(end - start));
    let mut counting = CountingWriter {
        inner: stream,
        counter: &state.bytes_served,
    };
    io::copy(&mut file.take(send), &mut counting)?;
    Ok(())
}

struct CountingWriter<'a, W> {
    inner: W,
    counter: &'a AtomicU64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.counter.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    /// Not a single byte range we serve: answer the whole file.
    Ignore,
    /// `[start, end)`.
    Bytes(u64, u64),
    Unsatisfiable,
}

fn parse_range(value: &str, len: u64) -> RangeSpec {
    let Some(spec) = value.strip_prefix("bytes=") else {
        return RangeSpec::Ignore;
    };
    if spec.contains(',') {
        return RangeSpec::Ignore;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix range: the last `b` bytes.
        return match b.parse::<u64>() {
            Ok(0) | Err(_) => RangeSpec::Unsatisfiable,
            Ok(n) => RangeSpec::Bytes(len.saturating_sub(n), len),
        };
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeSpec::Ignore;
    };
    if start >= len {
        return RangeSpec::Unsatisfiable;
    }
    let end = if b.is_empty() {
        len
    } else {
        match b.parse::<u64>() {
            Ok(last) if last >= start => (last + 1).min(len),
            _ => return RangeSpec::Ignore,
        }
    };
    RangeSpec::Bytes(start, end)
}

/// Decodes a request target's path (`%2B` -> `+`), dropping the query.
/// `None` for anything that is not an absolute path of plain segments.
fn decode_path(target: &str) -> Option<String> {
    let raw = target.split(['?', '#']).next()?;
    if !raw.starts_with('/') {
        return None;
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let path = String::from_utf8(out).ok()?;
    if path.contains('\0') || path.contains('\\') || path.split('/').any(|s| s == ".." || s == ".")
    {
        return None;
    }
    Some(path)
}

/// The k3s release asset name of `arch`'s binary: `k3s` (amd64),
/// `k3s-arm64`, `k3s-armhf` (`arm` or `armhf`).
pub fn binary_asset(arch: &str) -> Result<&'static str> {
    Ok(match arch {
        "amd64" => "k3s",
        "arm64" => "k3s-arm64",
        "arm" | "armhf" => "k3s-armhf",
        _ => bail!("unknown k3s architecture {arch:?}"),
    })
}

/// The checksum list of `arch`: `sha256sum-amd64.txt`, `sha256sum-arm64.txt`,
/// `sha256sum-arm.txt` (as k3s names them; armhf's list is `-arm`).
pub fn checksum_asset(arch: &str) -> Result<String> {
    let name = match arch {
        "amd64" | "arm64" => arch,
        "arm" | "armhf" => "arm",
        _ => bail!("unknown k3s architecture {arch:?}"),
    };
    Ok(format!("sha256sum-{name}.txt"))
}

/// `<root>/<version_full>`: GitHub's `releases/download/<version>/` layout.
pub fn github_release_dir(root: &Path, version_full: &str) -> PathBuf {
    root.join(version_full)
}

/// `<root>/k3s/<version with + as ->`: the mirror layout.
pub fn mirror_release_dir(root: &Path, version_full: &str) -> PathBuf {
    root.join("k3s").join(version_full.replace('+', "-"))
}

/// Lays out a GitHub-style release under `<root>/<version_full>/`: the
/// binary of each arch, `sha256sum-<arch>.txt` (`<hex>  <asset>` lines, as
/// k3s writes them), `k3s-images.txt` (one reference per line) and
/// `install.sh`. Returns the release dir.
pub fn write_github_release(
    root: &Path,
    version_full: &str,
    arch_assets: &[(&str, &[u8])],
    images_txt: &[String],
    install_sh: &str,
) -> Result<PathBuf> {
    let dir = github_release_dir(root, version_full);
    write_release_dir(&dir, arch_assets, images_txt, install_sh)?;
    Ok(dir)
}

/// The same assets in the mirror layout, `<root>/k3s/<version with + as ->/`.
pub fn write_mirror_release(
    root: &Path,
    version_full: &str,
    arch_assets: &[(&str, &[u8])],
    images_txt: &[String],
    install_sh: &str,
) -> Result<PathBuf> {
    let dir = mirror_release_dir(root, version_full);
    write_release_dir(&dir, arch_assets, images_txt, install_sh)?;
    Ok(dir)
}

fn write_release_dir(
    dir: &Path,
    arch_assets: &[(&str, &[u8])],
    images_txt: &[String],
    install_sh: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut images = images_txt.join("\n");
    images.push('\n');
    let images_line = format!("{}  k3s-images.txt\n", Digest::of(images.as_bytes()).hex());
    std::fs::write(dir.join("k3s-images.txt"), &images)?;
    for (arch, bytes) in arch_assets {
        let asset = binary_asset(arch)?;
        std::fs::write(dir.join(asset), bytes)?;
        let sums = format!("{}  {asset}\n{images_line}", Digest::of(bytes).hex());
        std::fs::write(dir.join(checksum_asset(arch)?), sums)?;
    }
    std::fs::write(dir.join("install.sh"), install_sh)?;
    Ok(())
}

/// Flips one byte in the middle of `path` (same size, different digest), so
/// that the checksum lists no longer match it.
pub fn corrupt_file(path: &Path) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {} to corrupt it", path.display()))?;
    let len = f.metadata()?.len();
    if len == 0 {
        bail!("cannot corrupt empty file {}", path.display());
    }
    let mut b = [0u8];
    f.seek(SeekFrom::Start(len / 2))?;
    f.read_exact(&mut b)?;
    f.seek(SeekFrom::Start(len / 2))?;
    f.write_all(&[b[0] ^ 0xff])?;
    Ok(())
}

/// Corrupts `asset` of the GitHub-layout release `version_full` under `root`.
pub fn corrupt_asset(root: &Path, version_full: &str, asset: &str) -> Result<()> {
    corrupt_file(&github_release_dir(root, version_full).join(asset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http;

    fn release() -> (tempfile::TempDir, ReleaseServer) {
        let dir = tempfile::tempdir().unwrap();
        let arches: [(&str, &[u8]); 2] = [("amd64", b"0123456789"), ("armhf", b"arm")];
        write_github_release(
            dir.path(),
            "v1.20.6+k3s1",
            &arches,
            &["docker.io/rancher/pause:3.1".to_string()],
            "#!/bin/sh\n",
        )
        .unwrap();
        let server = ReleaseServer::start(dir.path()).unwrap();
        (dir, server)
    }

    #[test]
    fn serves_ranges_heads_and_counts() {
        let (_dir, server) = release();
        let url = format!("{}/v1.20.6%2Bk3s1/k3s", server.url());
        let r = http::get(&url, &[]).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"0123456789"[..]));
        let r = http::get(&url, &[("Range", "bytes=4-")]).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (206, &b"456789"[..]));
        assert_eq!(r.header("content-range"), Some("bytes 4-9/10"));
        let r = http::get(&url, &[("Range", "bytes=2-4")]).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (206, &b"234"[..]));
        let r = http::get(&url, &[("Range", "bytes=10-")]).unwrap();
        assert_eq!(
            (r.status, r.header("content-range")),
            (416, Some("bytes */10"))
        );
        let r = http::request("HEAD", &url, &[], http::Body::Empty).unwrap();
        assert_eq!((r.status, r.header("content-length")), (200, Some("10")));
        assert_eq!(server.requests("/v1.20.6+k3s1/k3s"), 5);
        assert_eq!(server.bytes_served(), 10 + 6 + 3);
        let missing = http::get(&format!("{}/v1.20.6+k3s1/nope", server.url()), &[]).unwrap();
        assert_eq!(missing.status, 404);
        let escape = http::get(
            &format!("{}/v1.20.6+k3s1/%2E%2E/%2E%2E/etc/passwd", server.url()),
            &[],
        );
        assert_eq!(escape.unwrap().status, 400);
    }

    #[test]
    fn lays_out_checksums_and_injects_faults() {
        let (dir, server) = release();
        let rel = github_release_dir(dir.path(), "v1.20.6+k3s1");
        let sums = std::fs::read_to_string(rel.join("sha256sum-arm.txt")).unwrap();
        assert!(sums.starts_with(&format!("{}  k3s-armhf\n", Digest::of(b"arm").hex())));
        corrupt_asset(dir.path(), "v1.20.6+k3s1", "k3s").unwrap();
        assert_ne!(std::fs::read(rel.join("k3s")).unwrap(), b"0123456789");
        let path = "/v1.20.6+k3s1/k3s-images.txt";
        let url = format!("{}{path}", server.url());
        server.set_fault(
            path,
            Fault::FailNext {
                status: 503,
                times: 1,
            },
        );
        assert_eq!(http::get(&url, &[]).unwrap().status, 503);
        assert_eq!(
            http::get(&url, &[]).unwrap().body,
            b"docker.io/rancher/pause:3.1\n"
        );
        server.set_fault(path, Fault::TruncateAfter(5));
        assert!(http::get(&url, &[]).is_err(), "short body is an error");
    }

    #[test]
    fn parses_ranges() {
        assert_eq!(parse_range("bytes=0-", 5), RangeSpec::Bytes(0, 5));
        assert_eq!(parse_range("bytes=1-100", 5), RangeSpec::Bytes(1, 5));
        assert_eq!(parse_range("bytes=-2", 5), RangeSpec::Bytes(3, 5));
        assert_eq!(parse_range("bytes=5-", 5), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range("bytes=3-1", 5), RangeSpec::Ignore);
        assert_eq!(parse_range("items=1-2", 5), RangeSpec::Ignore);
        assert_eq!(decode_path("/a%2Bb/c?x=1").as_deref(), Some("/a+b/c"));
        assert_eq!(decode_path("/a/../b"), None);
        assert_eq!(decode_path("/a/%zz"), None);
    }
}
