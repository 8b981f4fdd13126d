//! Test images built in code, deterministically: the same calls give the same
//! bytes and so the same digests (fixed mtimes, uids and gzip headers).
//!
//! Owns gzip tar layers ([`LayerBuilder`], [`busybox_layer`], streamed
//! [`random_layer`]s for benchmarks), image configs, image manifests in Docker
//! schema 2 or OCI media types, and multi-arch indexes. Manifests are
//! serialised once; their bytes are what gets pushed and what digests name.

use airgap_bundle::digest::{Digest, HashingWriter};
use airgap_bundle::oci::{self, Descriptor, Index, Manifest, Platform};
use anyhow::{Context, Result};
use flate2::Compression;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The mtime of every tar entry (2021-04-13, the v1.20.6 release week).
pub const LAYER_MTIME: u64 = 1_618_300_000;
/// The `created` time of every image config.
pub const CREATED: &str = "2021-04-13T00:00:00Z";
/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX_PATH: &str = "/bin/busybox";
/// The applets linked in [`busybox_layer`].
pub const BUSYBOX_APPLETS: &[&str] = &["sh", "echo", "cat", "ls", "sleep"];

/// Which family of media types an image uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Docker image manifest v2 schema 2 (and manifest lists).
    Docker,
    /// OCI image manifest (and image indexes).
    Oci,
}

impl Kind {
    pub fn manifest_type(self) -> &'static str {
        match self {
            Kind::Docker => oci::DOCKER_MANIFEST,
            Kind::Oci => oci::OCI_MANIFEST,
        }
    }
    pub fn config_type(self) -> &'static str {
        match self {
            Kind::Docker => oci::DOCKER_CONFIG,
            Kind::Oci => oci::OCI_CONFIG,
        }
    }
    pub fn layer_type(self) -> &'static str {
        match self {
            Kind::Docker => oci::DOCKER_LAYER_GZIP,
            Kind::Oci => oci::OCI_LAYER_GZIP,
        }
    }
    pub fn index_type(self) -> &'static str {
        match self {
            Kind::Docker => oci::DOCKER_LIST,
            Kind::Oci => oci::OCI_INDEX,
        }
    }
}

/// Where a blob's bytes are.
#[derive(Debug, Clone)]
pub enum Content {
    Bytes(Arc<Vec<u8>>),
    /// A temp file, removed when the last clone is dropped.
    TempFile(Arc<tempfile::TempPath>),
    /// Already pushed and let go (benchmarks free their big temp files).
    Released,
}

/// A blob with its digest and size.
#[derive(Debug, Clone)]
pub struct Blob {
    pub digest: Digest,
    pub size: u64,
    pub content: Content,
}

impl Blob {
    pub fn from_bytes(bytes: Vec<u8>) -> Blob {
        Blob {
            digest: Digest::of(&bytes),
            size: bytes.len() as u64,
            content: Content::Bytes(Arc::new(bytes)),
        }
    }

    /// The bytes, when held in memory.
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.content {
            Content::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The file holding the bytes, when streamed to disk.
    pub fn path(&self) -> Option<&Path> {
        match &self.content {
            Content::TempFile(p) => Some(p),
            _ => None,
        }
    }

    /// A reader over the bytes.
    pub fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        match &self.content {
            Content::Bytes(b) => Ok(Box::new(&b[..])),
            Content::TempFile(p) => Ok(Box::new(io::BufReader::with_capacity(
                256 << 10,
                std::fs::File::open(&**p)?,
            ))),
            Content::Released => Err(io::Error::other(format!(
                "blob {} was released after pushing",
                self.digest
            ))),
        }
    }

    /// A descriptor of this blob with `media_type`.
    pub fn descriptor(&self, media_type: &str) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: self.digest,
            size: self.size,
            platform: None,
            annotations: BTreeMap::new(),
        }
    }
}

/// A gzip-compressed tar layer.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The compressed bytes (what registries store and manifests name).
    pub blob: Blob,
    /// sha256 of the uncompressed tar (what the config's rootfs lists).
    pub diff_id: Digest,
}

impl Layer {
    /// Lets go of the bytes (after pushing) while keeping the digests.
    pub fn release(&mut self) {
        self.blob.content = Content::Released;
    }
}

enum Entry {
    File { contents: Vec<u8>, mode: u32 },
    Dir { mode: u32 },
    Symlink { target: String },
}

/// Builds a layer from files, directories and symlinks, in the order added.
/// Missing parent directories are added (mode 0755) before their children.
#[derive(Default)]
pub struct LayerBuilder {
    entries: Vec<(String, Entry)>,
    dirs: BTreeSet<String>,
}

impl LayerBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A regular file (`path` with or without a leading `/`).
    pub fn file(mut self, path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        let path = self.prepare(path);
        self.entries.push((
            path,
            Entry::File {
                contents: contents.into(),
                mode,
            },
        ));
        self
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let path = self.prepare(path);
        if self.dirs.insert(path.clone()) {
            self.entries.push((path, Entry::Dir { mode }));
        }
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let path = self.prepare(path);
        self.entries.push((
            path,
            Entry::Symlink {
                target: target.to_string(),
            },
        ));
        self
    }

    fn prepare(&mut self, path: &str) -> String {
        let path = path
            .trim_start_matches('/')
            .trim_end_matches('/')
            .to_string();
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..parts.len() {
            let parent = parts[..i].join("/");
            if self.dirs.insert(parent.clone()) {
                self.entries.push((parent, Entry::Dir { mode: 0o755 }));
            }
        }
        path
    }

    /// The uncompressed tar.
    pub fn tar(&self) -> Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, entry) in &self.entries {
            match entry {
                Entry::File { contents, mode } => {
                    let mut h = header(tar::EntryType::Regular, *mode, contents.len() as u64);
                    builder.append_data(&mut h, path, &contents[..])?;
                }
                Entry::Dir { mode } => {
                    let mut h = header(tar::EntryType::Directory, *mode, 0);
                    builder.append_data(&mut h, format!("{path}/"), io::empty())?;
                }
                Entry::Symlink { target } => {
                    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                    builder.append_link(&mut h, path, target)?;
                }
            }
        }
        Ok(builder.into_inner()?)
    }

    /// The gzip-compressed layer and its diff_id.
    pub fn build(&self) -> Result<Layer> {
        let tar = self.tar()?;
        let diff_id = Digest::of(&tar);
        let mut gz = gzip(Vec::new(), Compression::default());
        gz.write_all(&tar)?;
        Ok(Layer {
            blob: Blob::from_bytes(gz.finish()?),
            diff_id,
        })
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(LAYER_MTIME);
    let _ = h.set_username("root");
    let _ = h.set_groupname("root");
    h
}

/// A gzip encoder with a fixed header (no name, mtime 0), so that output
/// depends only on the input.
fn gzip<W: Write>(w: W, level: Compression) -> flate2::write::GzEncoder<W> {
    flate2::GzBuilder::new().mtime(0).write(w, level)
}

/// A layer with Debian's static busybox as `/bin/busybox` and the
/// [`BUSYBOX_APPLETS`] as symlinks to it, so `/bin/echo` really runs. Built
/// once per process.
pub fn busybox_layer() -> Result<Layer> {
    static CACHE: OnceLock<Layer> = OnceLock::new();
    if let Some(layer) = CACHE.get() {
        return Ok(layer.clone());
    }
    let binary = std::fs::read(BUSYBOX_PATH)
        .with_context(|| format!("reading {BUSYBOX_PATH} (Debian package busybox-static)"))?;
    let mut builder = LayerBuilder::new()
        .dir("/bin", 0o755)
        .file(BUSYBOX_PATH, binary, 0o755);
    for applet in BUSYBOX_APPLETS {
        builder = builder.symlink(&format!("/bin/{applet}"), "busybox");
    }
    let layer = builder
        .dir("/etc", 0o755)
        .file("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .file("/etc/group", "root:x:0:\n", 0o644)
        .dir("/tmp", 0o1777)
        .dir("/root", 0o700)
        .build()?;
    Ok(CACHE.get_or_init(|| layer).clone())
}

/// A seeded xorshift64* stream: incompressible, reproducible filler.
pub struct RandomReader {
    state: u64,
    remaining: u64,
}

impl RandomReader {
    pub fn new(seed: u64, len: u64) -> Self {
        // Zero is xorshift's fixed point; mix the seed so nearby seeds differ.
        let state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        RandomReader {
            state,
            remaining: len,
        }
    }
}

impl Read for RandomReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.remaining.min(1 << 20) as usize);
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let v = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// A layer holding one file `path` of `len` seeded pseudo-random bytes,
/// streamed to a temp file in `dir` (never held in memory). Uses fast
/// compression: the content does not compress anyway.
pub fn random_layer(dir: &Path, path: &str, len: u64, seed: u64) -> Result<Layer> {
    let file = tempfile::Builder::new()
        .prefix("layer-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a layer file in {}", dir.display()))?;
    let (file, temp_path) = file.into_parts();
    let compressed = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    let uncompressed = HashingWriter::new(gzip(compressed, Compression::fast()));
    let mut builder = tar::Builder::new(uncompressed);
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    builder.append_data(&mut h, "data/", io::empty())?;
    let mut h = header(tar::EntryType::Regular, 0o644, len);
    let path = path.trim_start_matches('/');
    builder.append_data(&mut h, path, RandomReader::new(seed, len))?;
    let (gz, diff) = builder.into_inner()?.finish();
    let (writer, compressed) = gz.finish()?.finish();
    let file = writer.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(Layer {
        blob: Blob {
            digest: compressed.digest,
            size: compressed.size,
            content: Content::TempFile(Arc::new(temp_path)),
        },
        diff_id: diff.digest,
    })
}

/// What goes into an image config besides its layers.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub kind: Kind,
    pub platform: Platform,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

impl ImageSpec {
    /// linux/`arch` (`amd64`, `arm64`, `arm` = linux/arm/v7), no command.
    pub fn new(kind: Kind, arch: &str) -> Self {
        ImageSpec {
            kind,
            platform: Platform::for_arch(arch)
                .unwrap_or_else(|| panic!("unknown architecture {arch}")),
            cmd: Vec::new(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            labels: BTreeMap::new(),
        }
    }

    pub fn cmd(mut self, cmd: &[&str]) -> Self {
        self.cmd = cmd.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn env(mut self, var: &str) -> Self {
        self.env.push(var.to_string());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    /// The config JSON for `diff_ids`.
    pub fn config_json(&self, diff_ids: &[Digest]) -> Vec<u8> {
        let mut config = serde_json::json!({
            "architecture": self.platform.architecture,
            "os": self.platform.os,
            "created": CREATED,
            "config": { "Env": self.env, "Cmd": self.cmd, "Labels": self.labels },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": diff_ids.iter().map(|_| serde_json::json!({
                "created": CREATED, "created_by": "airgap-testbed"
            })).collect::<Vec<_>>(),
        });
        if let Some(v) = &self.platform.variant {
            config["variant"] = v.clone().into();
        }
        serde_json::to_vec(&config).expect("config serialises")
    }

    /// Builds the config and the manifest over `layers`.
    pub fn build(&self, layers: Vec<Layer>) -> Image {
        let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id).collect();
        let config = Blob::from_bytes(self.config_json(&diff_ids));
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(self.kind.manifest_type().to_string()),
            config: config.descriptor(self.kind.config_type()),
            layers: layers
                .iter()
                .map(|l| l.blob.descriptor(self.kind.layer_type()))
                .collect(),
        };
        let bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        Image {
            kind: self.kind,
            platform: self.platform.clone(),
            config,
            layers,
            manifest: Blob::from_bytes(bytes),
        }
    }
}

/// One platform's image: config, layers and the manifest naming them.
#[derive(Debug, Clone)]
pub struct Image {
    pub kind: Kind,
    pub platform: Platform,
    pub config: Blob,
    pub layers: Vec<Layer>,
    /// The exact manifest bytes.
    pub manifest: Blob,
}

impl Image {
    pub fn media_type(&self) -> &'static str {
        self.kind.manifest_type()
    }

    pub fn digest(&self) -> Digest {
        self.manifest.digest
    }

    /// A descriptor for an index entry, with the platform.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            platform: Some(self.platform.clone()),
            ..self.manifest.descriptor(self.media_type())
        }
    }

    /// Config and layers, in push order.
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(self.layers.iter().map(|l| &l.blob))
    }
}

/// A multi-arch index (OCI) or manifest list (Docker) over images.
#[derive(Debug, Clone)]
pub struct ImageIndex {
    pub kind: Kind,
    pub images: Vec<Image>,
    /// The exact index bytes.
    pub manifest: Blob,
}

impl ImageIndex {
    pub fn new(kind: Kind, images: Vec<Image>) -> ImageIndex {
        let index = Index {
            schema_version: 2,
            media_type: Some(kind.index_type().to_string()),
            manifests: images.iter().map(Image::descriptor).collect(),
            annotations: BTreeMap::new(),
        };
        let bytes = serde_json::to_vec_pretty(&index).expect("index serialises");
        ImageIndex {
            kind,
            images,
            manifest: Blob::from_bytes(bytes),
        }
    }

    pub fn media_type(&self) -> &'static str {
        self.kind.index_type()
    }

    pub fn digest(&self) -> Digest {
        self.manifest.digest
    }
}

/// A small layer with one text file, for images whose content does not matter.
pub fn note_layer(path: &str, text: &str) -> Result<Layer> {
    LayerBuilder::new().file(path, text, 0o644).build()
}

/// Writes a blob's bytes to `path` (for tests that need a file).
pub fn write_blob(blob: &Blob, path: &Path) -> Result<PathBuf> {
    let mut out = std::fs::File::create(path)?;
    io::copy(&mut blob.open()?, &mut out)?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
#[path = "image_tests.rs"]
mod tests;
