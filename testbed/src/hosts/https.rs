//! Reaching a test host's network from the test: the test process lives in
//! the root network namespace, which has no route to the hosts' subnet, so a
//! connection is made from inside a host by `busybox nc` and relayed over its
//! stdin and stdout. [`TestHost::https_request`] speaks HTTPS over that,
//! trusting only the CA it is given (the k3s stand-in's cluster CA).

use super::TestHost;
use anyhow::{anyhow, bail, Context, Result};
use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// How long one relayed request may take, connect to last byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A TCP connection opened from inside a host, relayed by `busybox nc`.
/// Dropping it kills the relay.
pub struct Relay {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
}

impl Relay {
    /// The relay's pid (to kill it from a timer).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Read for Relay {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stdout.read(buf)
    }
}

impl Write for Relay {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.stdin.as_mut() {
            Some(s) => s.write(buf),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stdin.as_mut().map_or(Ok(()), |s| s.flush())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response with its whole body.
#[derive(Debug, Clone)]
pub struct HttpsResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

impl HttpsResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl TestHost {
    /// Opens a TCP connection from inside this host to `address:port`.
    pub fn connect(&self, address: &str, port: u16) -> Result<Relay> {
        let mut child = self
            .command("busybox")
            .args(["nc", "-w", "5", address, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting busybox nc in host {}", self.name()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("nc's stdout")?;
        Ok(Relay {
            child,
            stdin,
            stdout,
        })
    }

    /// One HTTPS request from inside this host to `server` (`https://ip:port`),
    /// verifying the server's certificate against `ca_pem` only; `auth` is a
    /// whole `Authorization` header value.
    pub fn https_request(
        &self,
        server: &str,
        method: &str,
        path: &str,
        auth: Option<&str>,
        ca_pem: &str,
    ) -> Result<HttpsResponse> {
        let authority = server
            .strip_prefix("https://")
            .ok_or_else(|| anyhow!("{server} is not https://"))?
            .trim_end_matches('/');
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| anyhow!("{server} names no port"))?;
        let port: u16 = port.parse().with_context(|| format!("port in {server}"))?;
        let config = crate::pki::trusting(ca_pem)?;
        let name =
            ServerName::try_from(host.to_string()).with_context(|| format!("host in {server}"))?;
        let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
        let relay = self.connect(host, port)?;

        // A relay cannot time out a read: kill it when the time is up.
        let (done, timer) = mpsc::channel::<()>();
        let pid = relay.pid();
        let guard = std::thread::spawn(move || {
            if timer.recv_timeout(REQUEST_TIMEOUT).is_err() {
                super::procs::signal(pid, "KILL");
            }
        });
        let mut tls = rustls::StreamOwned::new(conn, relay);
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: 0\r\n{}\r\n",
            auth.map(|a| format!("Authorization: {a}\r\n"))
                .unwrap_or_default()
        );
        let mut raw = Vec::new();
        let io = tls
            .write_all(head.as_bytes())
            .and_then(|()| tls.flush())
            .and_then(|()| tls.read_to_end(&mut raw));
        let _ = done.send(());
        let _ = guard.join();
        io.with_context(|| format!("{method} {server}{path} from host {}", self.name()))?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| anyhow!("malformed response from {server}"))?;
        let head = String::from_utf8_lossy(&raw[..split]);
        let Some(status) = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()) else {
            bail!("malformed status line from {server}: {head}");
        };
        Ok(HttpsResponse {
            status,
            body: raw[split + 4..].to_vec(),
        })
    }
}
