//! The rig's certificate authorities and the PEM files they write: a
//! throwaway CA with one certificate for 127.0.0.1 and localhost (the
//! registry's HTTPS, the token server's signing key), the k3s stand-in's
//! cluster CA (a test double's) with the serving certificates it issues, and
//! TLS client settings that trust one CA only. Files go through
//! [`write_file`] (a temp file beside them, then a rename). It trusts the CA
//! files in the directories it is given: they are the rig's own.

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore};

/// The cluster CA's certificate in a k3s `tls` dir (also an agent's copy).
pub const CA_CRT: &str = "server-ca.crt";
/// The cluster CA's key in a k3s server's `tls` dir.
pub const CA_KEY: &str = "server-ca.key";

/// The crypto provider every TLS endpoint of the rig uses (ring, which
/// rustls already builds).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS client settings that trust only the certificates in `ca_pem`.
pub fn trusting(ca_pem: &str) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.context("parsing the CA")?)?;
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Writes `path` through a temp file in its directory, then renames it.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().with_context(|| format!("writing {}", path.display()))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// What [`write_loopback_tls`] wrote: `ca.pem`, and `cert.pem`/`key.pem`
/// issued by it for 127.0.0.1 and localhost; the certificate and key also
/// as DER.
pub struct LoopbackTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_der: CertificateDer<'static>,
    pub key_der: PrivatePkcs8KeyDer<'static>,
}

/// Creates a throwaway CA and a certificate for 127.0.0.1 and localhost
/// issued by it, and writes both (and the certificate's key) into `dir`.
pub fn write_loopback_tls(dir: &Path) -> Result<LoopbackTls> {
    let ca_key = KeyPair::generate()?;
    let ca_params = ca_params("airgap-testbed registry CA", Vec::new());
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "airgap-testbed registry");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let tls = LoopbackTls {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        cert_der: cert.der().clone(),
        key_der: PrivatePkcs8KeyDer::from(key.serialize_der()),
    };
    write_file(&tls.ca, ca_cert.pem().as_bytes(), 0o644)?;
    write_file(&tls.cert, cert.pem().as_bytes(), 0o644)?;
    write_file(&tls.key, key.serialize_pem().as_bytes(), 0o600)?;
    Ok(tls)
}

/// A CA's parameters: only its common name, and the key usages given.
fn ca_params(common_name: &str, key_usages: Vec<KeyUsagePurpose>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = key_usages;
    params
}

/// The local address a client reached and the name it asked for.
type ConnectionId = (Option<IpAddr>, Option<String>);

/// The k3s stand-in's cluster CA (a test double's) and the serving
/// certificates issued from it.
///
/// Serving certificates are issued per connection for the local address the
/// client reached and the name it asked for (SNI), as k3s's dynamiclistener
/// does, so agents can use any address of the host in `K3S_URL`.
pub struct ClusterCa {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    sans: Vec<String>,
    issued: Mutex<HashMap<ConnectionId, Arc<CertifiedKey>>>,
}

impl ClusterCa {
    /// Reads [`CA_CRT`] and [`CA_KEY`] in `tls_dir`; `None` when either is
    /// missing.
    pub fn load(tls_dir: &Path, sans: Vec<String>) -> Result<Option<ClusterCa>> {
        let (crt, key) = (tls_dir.join(CA_CRT), tls_dir.join(CA_KEY));
        if !(crt.exists() && key.exists()) {
            return Ok(None);
        }
        let ca_pem = read(&crt)?;
        let key = KeyPair::from_pem(&read(&key)?).context("reading server-ca.key")?;
        Ok(Some(ClusterCa::from_parts(ca_pem, key, sans)))
    }

    /// Creates a CA and writes it to `tls_dir`, the key first.
    pub fn create(tls_dir: &Path, sans: Vec<String>) -> Result<ClusterCa> {
        let key = KeyPair::generate()?;
        let ca_pem = cluster_ca_params().self_signed(&key)?.pem();
        ClusterCa::store(tls_dir, &ca_pem, &key.serialize_pem(), sans)
    }

    /// Writes a CA received from the first server to `tls_dir` and loads it.
    pub fn store(
        tls_dir: &Path,
        ca_pem: &str,
        key_pem: &str,
        sans: Vec<String>,
    ) -> Result<ClusterCa> {
        let key = KeyPair::from_pem(key_pem).context("bootstrap CA key")?;
        write_file(&tls_dir.join(CA_KEY), key_pem.as_bytes(), 0o600)?;
        write_file(&tls_dir.join(CA_CRT), ca_pem.as_bytes(), 0o644)?;
        Ok(ClusterCa::from_parts(ca_pem.to_string(), key, sans))
    }

    // The issuer needs only the CA's name and key: the name is fixed, so a
    // restart signs with the stored key under the same name.
    fn from_parts(ca_pem: String, key: KeyPair, sans: Vec<String>) -> ClusterCa {
        let issuer = Issuer::new(cluster_ca_params(), key);
        ClusterCa {
            ca_pem,
            issuer,
            sans,
            issued: Mutex::default(),
        }
    }

    /// The CA's key, PEM, for a joining server.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a serving certificate for the configured names plus `extra`,
    /// returning (cert PEM, key PEM, rustls key).
    pub fn issue(&self, extra: &[String]) -> Result<(String, String, Arc<CertifiedKey>)> {
        let mut names = self.sans.clone();
        names.extend(extra.iter().filter(|n| !self.sans.contains(n)).cloned());
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, "k3s");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "k3s stand-in (test double)");
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signer = rustls::crypto::ring::sign::any_supported_type(&der)?;
        let certified = CertifiedKey::new(vec![cert.der().clone()], signer);
        Ok((cert.pem(), key.serialize_pem(), Arc::new(certified)))
    }

    /// The serving certificate for one connection (the local address the
    /// client reached and the name it asked for), issued on first use.
    pub fn for_connection(
        &self,
        local: Option<IpAddr>,
        sni: Option<&str>,
    ) -> Result<Arc<CertifiedKey>> {
        let id = (local, sni.map(str::to_string));
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = issued.get(&id) {
            return Ok(key.clone());
        }
        let extra: Vec<String> = local
            .iter()
            .map(IpAddr::to_string)
            .chain(id.1.clone())
            .collect();
        let (_, _, key) = self
            .issue(&extra)
            .with_context(|| format!("cannot issue a serving certificate for {extra:?}"))?;
        Ok(issued.entry(id).or_insert(key).clone())
    }
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("sans", &self.sans)
            .finish_non_exhaustive()
    }
}

fn cluster_ca_params() -> CertificateParams {
    ca_params(
        "k3s-server-ca (k3s stand-in test double)",
        vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ],
    )
}
