//! `import`: a bundle's images into containerd over its gRPC API, ready for
//! Kubernetes — what `ctr -n k8s.io images import` plus an unpack does, but
//! streamed straight from the bundle and checked at every step.
//!
//! Every write happens under one lease (which expires by itself if the
//! installer dies), blobs are written with their expected digest and size so
//! containerd refuses anything else at commit, image records are created only
//! once every blob they need is committed and the host platform's layers are
//! unpacked into the snapshotter, and the lease is deleted last. It trusts the
//! bundle's digests (checked by the reader and again by containerd) and
//! containerd itself; nothing here touches the host's files.
//!
//! containerd may restart under an import (a crash, a package upgrade): a
//! call that finds the connection broken waits, up to
//! [`ImportOptions::reconnect`], for containerd to answer again and carries
//! on, a blob write from the offset containerd kept in its ingest (the lease
//! and the ingest survive the restart). When it does not come back, or
//! comes back without what was written, the error is a [`ContainerdLost`]
//! naming the socket and what the import was doing.
//!
//! One file each: [`client`] (the connection, the lease, waiting for a
//! restarted containerd, image records), [`error`] (what a caller matches
//! on), [`content`] (blobs in and out of the content store), [`unpack`]
//! (layers into snapshots), [`sink`] (the bundle reader's side).

pub mod client;
pub mod content;
pub mod error;
pub mod sink;
pub mod unpack;

pub use client::Importer;
pub(crate) use client::{wait_for_containerd, RECONNECTS};
pub use content::{gc_labels, BlobWriter, Committed};
pub(crate) use error::{grpc, is_lost_status};
pub use error::{is_connection_lost, ContainerdLost, GrpcError, NotRunning};
pub use sink::{import_bundle, ImageReport, ImportReport, ImportSink, SkippedImage};
pub use unpack::UnpackOutcome;

use airgap_bundle::digest::Digest;
use airgap_bundle::oci::Platform;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// The namespace the CRI plugin (and so Kubernetes) reads images from.
pub const DEFAULT_NAMESPACE: &str = "k8s.io";
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";

/// Marks an image as one the CRI plugin manages (lists, garbage-collects).
pub const LABEL_CRI_IMAGE: &str = "io.cri-containerd.image";
/// Keeps the CRI plugin's image GC away from an image (the sandbox image).
pub const LABEL_CRI_PINNED: &str = "io.cri-containerd.pinned";
/// When a lease stops protecting what was written under it.
pub const LABEL_GC_EXPIRE: &str = "containerd.io/gc.expire";

const NAMESPACE_HEADER: &str = "containerd-namespace";
const LEASE_HEADER: &str = "containerd-lease";
const SNAPSHOTTER_PLUGIN: &str = "io.containerd.snapshotter.v1";

/// Where and how to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// containerd's gRPC socket.
    pub socket: PathBuf,
    /// containerd namespace (`k8s.io` for Kubernetes).
    pub namespace: String,
    /// Snapshotter the host platform's layers are unpacked into.
    pub snapshotter: String,
    /// The host's platform: only its manifest of each image is unpacked and
    /// named; other platforms' blobs are imported as content.
    pub platform: Platform,
    /// How long containerd may take to accept the connection and answer.
    pub timeout: Duration,
    /// How long the import's lease protects unreferenced content if the
    /// installer dies before deleting it. A longer import is still safe: the
    /// blobs an image needs are checked again before it is named.
    pub lease_expiry: Duration,
    /// How long to wait for containerd to answer again after the connection
    /// broke mid-import (it restarted).
    pub reconnect: Duration,
}

impl ImportOptions {
    /// `k8s.io`, `overlayfs`, this host's platform, 10 s, 1 h, 30 s.
    pub fn new(socket: impl Into<PathBuf>) -> ImportOptions {
        ImportOptions {
            socket: socket.into(),
            namespace: DEFAULT_NAMESPACE.to_string(),
            snapshotter: DEFAULT_SNAPSHOTTER.to_string(),
            platform: host_platform(),
            timeout: Duration::from_secs(10),
            lease_expiry: Duration::from_secs(3600),
            reconnect: Duration::from_secs(30),
        }
    }
}

/// The platform of the machine this runs on.
pub fn host_platform() -> Platform {
    Platform::host()
}

/// What [`Importer::create_image`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageOutcome {
    Created,
    /// The name pointed elsewhere, or lacked the CRI labels.
    Updated,
    Unchanged,
}

/// An image record as containerd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub name: String,
    pub target: Digest,
    pub media_type: String,
    pub labels: HashMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_platform_is_known() {
        let p = host_platform();
        assert_eq!(p.os, "linux");
        assert!(Platform::for_arch("amd64").unwrap().matches(&p) || p.architecture != "amd64");
    }
}
