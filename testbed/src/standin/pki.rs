//! The cluster CA of the k3s stand-in (a test double) and the serving
//! certificates it issues. Trusts the CA files in its own data dir.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::PrivateKeyDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{log, read, write_file, Bootstrap};

/// The local address a client reached and the name it asked for.
type ConnectionId = (Option<IpAddr>, Option<String>);

/// The cluster CA and the serving certificates issued from it.
///
/// Serving certificates are issued per connection for the local address the
/// client reached and the name it asked for (SNI), as k3s's dynamiclistener
/// does, so agents can use any address of the host in `K3S_URL`.
pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    sans: Vec<String>,
    issued: Mutex<HashMap<ConnectionId, Arc<CertifiedKey>>>,
}

impl Pki {
    /// Reads `server-ca.crt`/`.key` in `tls_dir`, creating them on first start.
    pub fn load_or_create(tls_dir: &Path, sans: Vec<String>) -> Result<Pki> {
        let (crt, key) = (tls_dir.join("server-ca.crt"), tls_dir.join("server-ca.key"));
        if crt.exists() && key.exists() {
            let ca_pem = read(&crt)?;
            let key = KeyPair::from_pem(&read(&key)?).context("reading server-ca.key")?;
            return Ok(Pki::from_parts(ca_pem, key, sans));
        }
        let key = KeyPair::generate()?;
        let ca_pem = ca_params().self_signed(&key)?.pem();
        write_file(
            &tls_dir.join("server-ca.key"),
            key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_file(&crt, ca_pem.as_bytes(), 0o644)?;
        log(format_args!("created cluster CA {}", crt.display()));
        Ok(Pki::from_parts(ca_pem, key, sans))
    }

    /// Stores a CA received from the first server and loads it.
    pub fn store(tls_dir: &Path, boot: &Bootstrap, sans: Vec<String>) -> Result<Pki> {
        let key = KeyPair::from_pem(&boot.server_ca_key).context("bootstrap CA key")?;
        write_file(
            &tls_dir.join("server-ca.key"),
            boot.server_ca_key.as_bytes(),
            0o600,
        )?;
        write_file(
            &tls_dir.join("server-ca.crt"),
            boot.server_ca_crt.as_bytes(),
            0o644,
        )?;
        Ok(Pki::from_parts(boot.server_ca_crt.clone(), key, sans))
    }

    // The issuer needs only the CA's name and key: the name is fixed, so a
    // restart signs with the stored key under the same name.
    fn from_parts(ca_pem: String, key: KeyPair, sans: Vec<String>) -> Pki {
        let issuer = Issuer::new(ca_params(), key);
        Pki {
            ca_pem,
            issuer,
            sans,
            issued: Mutex::default(),
        }
    }

    pub fn bootstrap(&self) -> Bootstrap {
        Bootstrap {
            server_ca_crt: self.ca_pem.clone(),
            server_ca_key: self.issuer.key().serialize_pem(),
        }
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

    fn for_connection(
        &self,
        local: Option<IpAddr>,
        sni: Option<&str>,
    ) -> Option<Arc<CertifiedKey>> {
        let id = (local, sni.map(str::to_string));
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = issued.get(&id) {
            return Some(key.clone());
        }
        let extra: Vec<String> = local
            .iter()
            .map(IpAddr::to_string)
            .chain(id.1.clone())
            .collect();
        match self.issue(&extra) {
            Ok((_, _, key)) => Some(issued.entry(id).or_insert(key).clone()),
            Err(e) => {
                log(format_args!(
                    "cannot issue a serving certificate for {extra:?}: {e:#}"
                ));
                None
            }
        }
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        "k3s-server-ca (k3s stand-in test double)",
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Picks (issuing on first use) the certificate for one local address.
#[derive(Debug)]
pub(super) struct Resolver {
    pub(super) pki: Arc<Pki>,
    pub(super) local: Option<IpAddr>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("sans", &self.sans)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pki.for_connection(self.local, hello.server_name())
    }
}
