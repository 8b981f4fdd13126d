//! Signing keys and signatures, in minisign's format so that the standard
//! `minisign -Vm SHA256SUMS -p site.pub` verifies what airgap signs.
//!
//! Only `SHA256SUMS` is signed; every other entry is covered by its hash in
//! that file. The trusted comment (which the signature also covers) names the
//! bundle, so a signature cannot be moved to another bundle's checksums
//! without it showing.

use std::io::Cursor;
use std::path::Path;

pub use minisign::{PublicKey, SecretKey};

/// A signature that does not verify, or a key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("signature of {what} does not verify with the given public key: {reason}")]
    Invalid { what: String, reason: String },
    #[error("signature of {what} was made with key {found}, not with the trusted key {trusted}")]
    WrongKey {
        what: String,
        trusted: String,
        found: String,
    },
    #[error("{what}: not a minisign signature: {reason}")]
    Malformed { what: String, reason: String },
}

/// A freshly generated key pair, as the text of the two files.
pub struct GeneratedKeys {
    pub public_key_file: String,
    pub secret_key_file: String,
    pub key_id: String,
}

/// Key ids are printed as minisign prints them: 16 upper-case hex digits of
/// the little-endian key number.
fn key_id(keynum: &[u8]) -> String {
    keynum.iter().rev().map(|b| format!("{b:02X}")).collect()
}

/// Generates a key pair; with a password the secret key is encrypted with
/// minisign's scrypt parameters, without one it is stored in the clear.
pub fn generate(password: Option<String>) -> anyhow::Result<GeneratedKeys> {
    let pair = match password {
        Some(pw) => minisign::KeyPair::generate_encrypted_keypair(Some(pw))?,
        None => minisign::KeyPair::generate_unencrypted_keypair()?,
    };
    let id = key_id(pair.pk.keynum());
    Ok(GeneratedKeys {
        public_key_file: pair.pk.to_box()?.into_string(),
        secret_key_file: pair
            .sk
            .to_box(Some(&format!("airgap secret key {id}")))?
            .into_string(),
        key_id: id,
    })
}

/// Reads a secret key file; an encrypted one needs its password.
pub fn load_secret_key(path: &Path, password: Option<String>) -> anyhow::Result<SecretKey> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading secret key {}", path.display()))?;
    let sk_box = minisign::SecretKeyBox::from_string(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a minisign secret key: {e}", path.display()))?;
    match password {
        Some(pw) => sk_box.into_secret_key(Some(pw)).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot decrypt the secret key (wrong password?): {e}",
                path.display()
            )
        }),
        None => {
            // minisign cannot tell "encrypted" from "damaged" without the
            // password; an encrypted key is by far the likelier.
            let encrypted = || {
                anyhow::anyhow!(
                    "{} is encrypted: give its password with --password-file or AIRGAP_KEY_PASSWORD",
                    path.display()
                )
            };
            let sk = sk_box
                .into_unencrypted_secret_key()
                .map_err(|_| encrypted())?;
            if sk.is_encrypted() {
                anyhow::bail!(
                    "{} is encrypted: give its password with --password-file or AIRGAP_KEY_PASSWORD",
                    path.display()
                );
            }
            Ok(sk)
        }
    }
}

/// Reads a public key file (`minisign -G`'s `.pub` or ours) or a bare base64 key.
pub fn load_public_key(path: &Path) -> anyhow::Result<PublicKey> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading public key {}", path.display()))?;
    parse_public_key(&text)
        .with_context(|| format!("{}: not a minisign public key", path.display()))
}

pub fn parse_public_key(text: &str) -> anyhow::Result<PublicKey> {
    let trimmed = text.trim();
    let key = if trimmed.lines().count() == 1 {
        PublicKey::from_base64(trimmed)?
    } else {
        minisign::PublicKeyBox::from_string(text)?.into_public_key()?
    };
    Ok(key)
}

/// The id of the key pair a secret key belongs to, as `minisign` prints it.
pub fn secret_key_id(sk: &SecretKey) -> String {
    key_id(sk.keynum())
}

/// The id of a public key, as `minisign` prints it.
pub fn public_key_id(pk: &PublicKey) -> String {
    key_id(pk.keynum())
}

/// A key id in the form people compare by eye and read out over a phone:
/// `4F2A 91C0 7B3E D812`.
pub fn fingerprint(key_id: &str) -> String {
    let chars: Vec<char> = key_id.chars().collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The id of `key` (read from `path`), refused unless it is `expected`
/// when one is given: the id the site was handed out of band.
pub fn expect_key_id(
    key: &PublicKey,
    path: &Path,
    expected: Option<&str>,
) -> anyhow::Result<String> {
    let id = public_key_id(key);
    if let Some(expected) = expected {
        if !same_key_id(&id, expected) {
            anyhow::bail!(
                "the key {} has id {id} ({}), not the expected {expected}: it is not the key you were given",
                path.display(),
                fingerprint(&id)
            );
        }
    }
    Ok(id)
}

/// Whether two key ids are the same, however they are written (case,
/// spaces, dashes or colons between the digits).
pub fn same_key_id(a: &str, b: &str) -> bool {
    let norm = |s: &str| -> String {
        s.chars()
            .filter(|c| !matches!(c, ' ' | '-' | ':'))
            .map(|c| c.to_ascii_uppercase())
            .collect()
    };
    norm(a) == norm(b)
}

/// The file name a key pair's public key goes by beside its bundle (on a
/// stick): the key file's name without its extension, then `.pub`, so that
/// the secret key `site.key` and the public key `site.pub` both give
/// `site.pub`; `site.pub` for a path without a file name.
pub fn public_key_name(key_path: &Path) -> String {
    let stem = key_path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "site".into());
    format!("{stem}.pub")
}

/// Signs `data` and returns the text of the `.minisig` file.
///
/// The signature is minisign's prehashed kind (`ED`: Ed25519 over the
/// BLAKE2b-512 of the data) followed by the global signature over the
/// first signature and the trusted comment, exactly as `minisign -S` writes
/// it. Unlike `minisign -S`, no random noise is mixed into the Ed25519
/// nonces: plain RFC 8032 Ed25519 is deterministic, so the same key,
/// checksums and comment give the same file, which is what makes a bundle
/// built twice with `SOURCE_DATE_EPOCH` byte-identical.
pub fn sign(sk: &SecretKey, data: &[u8], trusted_comment: &str) -> anyhow::Result<String> {
    use base64::Engine as _;
    use blake2::Digest as _;
    anyhow::ensure!(
        !sk.is_encrypted(),
        "the secret key is still encrypted: decrypt it with its password first"
    );
    anyhow::ensure!(
        !trusted_comment.contains(['\n', '\r']),
        "a trusted comment must be one line"
    );
    let key = SecretKeyParts::of(sk)?;
    let pair = ring::signature::Ed25519KeyPair::from_seed_and_public_key(key.seed(), key.public())
        .map_err(|_| {
            anyhow::anyhow!("the secret key's Ed25519 seed and public half do not match")
        })?;

    let prehash = blake2::Blake2b512::digest(data);
    let sig = pair.sign(&prehash);
    let mut sig_line = Vec::with_capacity(2 + 8 + 64);
    sig_line.extend_from_slice(b"ED");
    sig_line.extend_from_slice(key.keynum());
    sig_line.extend_from_slice(sig.as_ref());

    let mut covered = sig.as_ref().to_vec();
    covered.extend_from_slice(trusted_comment.as_bytes());
    let global = pair.sign(&covered);

    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(format!(
        "untrusted comment: signature from airgap secret key\n{}\ntrusted comment: {trusted_comment}\n{}\n",
        b64.encode(&sig_line),
        b64.encode(global.as_ref()),
    ))
}

/// A decrypted minisign secret key in its serialised form, cut into the
/// pieces signing needs: algorithm (2), KDF (2), checksum algorithm (2),
/// salt (32), ops and mem limits (8 + 8), key number (8), the Ed25519 secret
/// key as seed (32) then public key (32), checksum (32). The copy is wiped
/// when dropped.
struct SecretKeyParts {
    bytes: zeroize::Zeroizing<Vec<u8>>,
}

impl SecretKeyParts {
    const LEN: usize = 158;

    fn of(sk: &SecretKey) -> anyhow::Result<SecretKeyParts> {
        let parts = SecretKeyParts {
            bytes: zeroize::Zeroizing::new(sk.to_bytes()),
        };
        anyhow::ensure!(
            parts.bytes.len() == Self::LEN && parts.bytes.starts_with(b"Ed"),
            "not a minisign Ed25519 secret key"
        );
        Ok(parts)
    }

    fn keynum(&self) -> &[u8] {
        &self.bytes[54..62]
    }

    fn seed(&self) -> &[u8] {
        &self.bytes[62..94]
    }

    fn public(&self) -> &[u8] {
        &self.bytes[94..126]
    }
}

/// Verifies the `.minisig` text over `data` and returns its trusted comment.
pub fn verify(
    pk: &PublicKey,
    what: &str,
    signature: &str,
    data: &[u8],
) -> Result<String, SignatureError> {
    let sig_box =
        minisign::SignatureBox::from_string(signature).map_err(|e| SignatureError::Malformed {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
    if sig_box.keynum() != pk.keynum() {
        return Err(SignatureError::WrongKey {
            what: what.to_string(),
            trusted: key_id(pk.keynum()),
            found: key_id(sig_box.keynum()),
        });
    }
    minisign::verify(pk, &sig_box, Cursor::new(data), true, false, false).map_err(|e| {
        SignatureError::Invalid {
            what: what.to_string(),
            reason: e.to_string(),
        }
    })?;
    sig_box
        .trusted_comment()
        .map_err(|e| SignatureError::Malformed {
            what: what.to_string(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_names_follow_either_key_file() {
        assert_eq!(public_key_name(Path::new("keys/site.key")), "site.pub");
        assert_eq!(
            public_key_name(Path::new("/media/usb/site.pub")),
            "site.pub"
        );
        assert_eq!(public_key_name(Path::new("ops")), "ops.pub");
        assert_eq!(public_key_name(Path::new("/")), "site.pub");
    }

    #[test]
    fn sign_and_verify_round_trip() {
        let keys = generate(None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k.key"), &keys.secret_key_file).unwrap();
        std::fs::write(dir.path().join("k.pub"), &keys.public_key_file).unwrap();
        let sk = load_secret_key(&dir.path().join("k.key"), None).unwrap();
        let pk = load_public_key(&dir.path().join("k.pub")).unwrap();
        let sig = sign(&sk, b"data", "airgap test").unwrap();
        assert_eq!(
            verify(&pk, "SHA256SUMS", &sig, b"data").unwrap(),
            "airgap test"
        );
        let err = verify(&pk, "SHA256SUMS", &sig, b"datA").unwrap_err();
        assert!(matches!(err, SignatureError::Invalid { .. }), "{err}");
        let other = generate(None).unwrap();
        let other_pk = parse_public_key(&other.public_key_file).unwrap();
        let err = verify(&other_pk, "SHA256SUMS", &sig, b"data").unwrap_err();
        assert!(matches!(err, SignatureError::WrongKey { .. }), "{err}");
        assert!(verify(&pk, "x", "garbage", b"data").is_err());
    }

    #[test]
    fn signatures_are_deterministic_and_minisign_reads_them() {
        let keys = generate(Some("pw".into())).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k.key"), &keys.secret_key_file).unwrap();
        let sk = load_secret_key(&dir.path().join("k.key"), Some("pw".into())).unwrap();
        let pk = parse_public_key(&keys.public_key_file).unwrap();
        let a = sign(&sk, b"checksums", "bundle x").unwrap();
        let b = sign(&sk, b"checksums", "bundle x").unwrap();
        assert_eq!(a, b);
        assert_ne!(a, sign(&sk, b"checksums", "bundle y").unwrap());
        assert_ne!(a, sign(&sk, b"checksumz", "bundle x").unwrap());
        // The minisign crate's own verifier accepts both signatures (the
        // data's and the global one over the trusted comment).
        assert_eq!(
            verify(&pk, "SHA256SUMS", &a, b"checksums").unwrap(),
            "bundle x"
        );
        let forged = a.replace("bundle x", "bundle z");
        assert!(verify(&pk, "SHA256SUMS", &forged, b"checksums").is_err());
        assert!(sign(&sk, b"x", "two\nlines").is_err());
    }
}
