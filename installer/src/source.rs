//! Where a bundle comes from: a file (or a split bundle's parts) or standard
//! input. The install reads its source exactly once, in one pass, so a
//! source that cannot be read twice (a pipe, an SSH channel) installs as a
//! file does, and a stick that changes under the install cannot make it
//! record one bundle while installing another. Nothing read here is trusted:
//! the bytes go straight to the verifying reader.

use airgap_bundle::source::{decompress, open_bundle};
use anyhow::Context as _;
use std::fmt;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// One bundle to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleSource {
    /// A bundle file, a split bundle's name, any of its parts or its list.
    Path(PathBuf),
    /// The bundle streamed on standard input (`-`), e.g. over SSH.
    Stdin,
}

impl BundleSource {
    /// `-` means standard input; anything else is a path.
    pub fn from_arg(arg: &Path) -> BundleSource {
        if arg.as_os_str() == "-" {
            BundleSource::Stdin
        } else {
            BundleSource::Path(arg.to_path_buf())
        }
    }

    /// The decompressed tar stream. Call once per install: standard input
    /// cannot be read again.
    pub fn open(&self) -> anyhow::Result<Box<dyn Read + Send>> {
        match self {
            BundleSource::Path(path) => open_bundle(path),
            BundleSource::Stdin => decompress(BufReader::with_capacity(1 << 20, std::io::stdin()))
                .context("reading the bundle from standard input"),
        }
    }

    /// The bundle's file name, for the commands printed to the operator.
    pub fn file_name(&self) -> String {
        match self {
            BundleSource::Path(path) => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string()),
            BundleSource::Stdin => "<bundle>".into(),
        }
    }
}

impl fmt::Display for BundleSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BundleSource::Path(path) => write!(f, "{}", path.display()),
            BundleSource::Stdin => f.write_str("<standard input>"),
        }
    }
}
