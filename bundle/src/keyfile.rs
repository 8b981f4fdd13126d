//! Key files on disk: a new key pair written as `NAME.key` (secret, 0600)
//! and `NAME.pub`, refusing to replace existing ones unless told to.

use crate::atomic::{write_private, write_whole};
use crate::sign::generate;
use anyhow::bail;
use std::fmt;
use std::path::{Path, PathBuf};

/// The key pair `airgap keygen` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyPairFiles {
    pub secret_key: PathBuf,
    pub public_key: PathBuf,
    /// The key id, as minisign prints it.
    pub key_id: String,
}

impl fmt::Display for KeyPairFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "wrote {} (secret, keep it on the build machine) and {} (public, put it on the stick)",
            self.secret_key.display(),
            self.public_key.display()
        )?;
        write!(
            f,
            "key id {} (fingerprint {}): give it to each site out of band (not on the stick), \
             so that it can check the key it is handed",
            self.key_id,
            crate::sign::fingerprint(&self.key_id)
        )
    }
}

/// `base` with `ext` appended: `site` -> `site.key`.
fn with_ext(base: &Path, ext: &str) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(ext);
    PathBuf::from(name)
}

/// Generates a key pair and writes `BASE.key` and `BASE.pub`.
pub fn write_key_pair(
    base: &Path,
    password: Option<String>,
    force: bool,
) -> anyhow::Result<KeyPairFiles> {
    let (secret_key, public_key) = (with_ext(base, ".key"), with_ext(base, ".pub"));
    for path in [&secret_key, &public_key] {
        if path.symlink_metadata().is_ok() && !force {
            bail!("{} exists (use --force to overwrite)", path.display());
        }
    }
    let keys = generate(password)?;
    write_private(&secret_key, keys.secret_key_file.as_bytes())?;
    write_whole(&public_key, keys.public_key_file.as_bytes(), Some(0o644))?;
    Ok(KeyPairFiles {
        secret_key,
        public_key,
        key_id: keys.key_id,
    })
}
