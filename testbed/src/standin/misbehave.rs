//! A hostile k3s server for the join tests (a TEST DOUBLE of an attacker):
//! it serves a cluster CA's exact bytes, so the token's hash matches, but
//! presents a certificate of its own choosing, sends a `/cacerts` without
//! end, or redirects `/cacerts` elsewhere. It trusts nothing and checks
//! nothing; it only answers.

use crate::pki::ClusterCa;
use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

/// How `/cacerts` is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cacerts {
    /// The CA bytes, as k3s serves them.
    Plain,
    /// 1 GiB without a length, to be read until the connection closes.
    Huge,
    /// `302 Found` to `/real/cacerts`, which serves the CA bytes.
    Redirect,
}

/// Starts the server on a free loopback port, presenting a certificate
/// `cert_from` issues for 127.0.0.1 and serving `cacerts_pem` as `how`
/// says; returns its `https://127.0.0.1:PORT` URL. It serves until the
/// process ends.
pub fn start(cert_from: &ClusterCa, cacerts_pem: String, how: Cacerts) -> Result<String> {
    let (cert_pem, key_pem, _) = cert_from.issue(&["127.0.0.1".to_string()])?;
    let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).context("the certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("the key")?;
    let config = Arc::new(
        ServerConfig::builder_with_provider(crate::pki::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)?,
    );
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("https://{}", listener.local_addr()?);
    let body = Arc::new(cacerts_pem);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (config, body) = (config.clone(), body.clone());
            std::thread::spawn(move || {
                let _ = answer(stream, config, &body, how);
            });
        }
    });
    Ok(url)
}

fn answer(tcp: TcpStream, config: Arc<ServerConfig>, body: &str, how: Cacerts) -> Result<()> {
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let conn = rustls::ServerConnection::new(config)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let path = {
        let mut r = BufReader::new(&mut tls);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 || line == "\r\n" {
                break;
            }
        }
        path
    };
    let ok = |len: usize| {
        format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
    };
    match (path.as_str(), how) {
        ("/cacerts", Cacerts::Huge) => {
            write!(
                tls,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
            )?;
            let chunk = vec![b'A'; 64 << 10];
            for _ in 0..(1 << 14) {
                tls.write_all(&chunk)?;
            }
        }
        ("/cacerts", Cacerts::Redirect) => write!(
            tls,
            "HTTP/1.1 302 Found\r\nLocation: /real/cacerts\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?,
        ("/cacerts", Cacerts::Plain) | ("/real/cacerts", _) => {
            tls.write_all(ok(body.len()).as_bytes())?;
            tls.write_all(body.as_bytes())?;
        }
        _ => tls.write_all(format!("{}pong", ok(4)).as_bytes())?,
    }
    tls.conn.send_close_notify();
    tls.flush()?;
    Ok(())
}
