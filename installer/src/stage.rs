//! Staging the bundle's files on the host while the bundle streams: each file
//! the host needs (the k3s binary, the auto-deploy manifests, the embedded
//! runtime's image archive) is written to a temporary file beside its
//! destination, and renamed into place only after the whole bundle verified.
//! A file already holding the same bytes and mode is left alone, so a second
//! install changes nothing (same mtime).

use crate::root::{file_matches, Changes};
use airgap_bundle::atomic::AtomicFile;
use airgap_bundle::digest::{Digest, Hashed};
use airgap_bundle::read::{EntrySink, Header};
use anyhow::{bail, Context as _};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

/// Where one bundle entry goes on the host.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The host path (as on the host, for records and messages).
    pub host_path: String,
    /// The same path under `--root`.
    pub dest: PathBuf,
    pub mode: u32,
}

/// A file written (or found identical) by the stager.
#[derive(Debug, Clone)]
pub struct Placed {
    pub placement: Placement,
    pub digest: Digest,
    pub written: bool,
}

/// Stages bundle entries named in `placements`. It owns the run's undo log
/// (the directories it creates); dropped unpublished, it removes its temp
/// files first and then the directories made for them.
pub struct FileStager {
    placements: BTreeMap<String, Placement>,
    digests: BTreeMap<String, Digest>,
    current: Option<(String, AtomicFile)>,
    staged: Vec<(AtomicFile, Placed)>,
    unchanged: Vec<Placed>,
    // Last: fields drop in order, and a directory is removed only once empty.
    changes: Changes,
}

impl FileStager {
    pub fn new(placements: BTreeMap<String, Placement>, changes: Changes) -> Self {
        Self {
            placements,
            digests: BTreeMap::new(),
            current: None,
            staged: Vec::new(),
            unchanged: Vec::new(),
            changes,
        }
    }

    /// The run's undo log, to stage more under it while this stager holds it.
    pub fn changes(&mut self) -> &mut Changes {
        &mut self.changes
    }

    /// Renames every staged file into place and hands back the undo log.
    /// Call only after the whole bundle verified (and the images were
    /// imported).
    pub fn publish(mut self) -> anyhow::Result<(Vec<Placed>, Changes)> {
        let mut placed = std::mem::take(&mut self.unchanged);
        for (file, p) in std::mem::take(&mut self.staged) {
            file.commit()
                .with_context(|| format!("installing {}", p.placement.host_path))?;
            placed.push(p);
        }
        placed.sort_by(|a, b| a.placement.host_path.cmp(&b.placement.host_path));
        Ok((placed, self.changes))
    }
}

impl EntrySink for FileStager {
    fn begin(&mut self, header: &Header) -> anyhow::Result<()> {
        for path in self.placements.keys() {
            match header.sums.get(path) {
                Some(d) => {
                    self.digests.insert(path.clone(), *d);
                }
                None => bail!("the bundle has no {path}"),
            }
        }
        Ok(())
    }

    fn entry(&mut self, path: &str, _size: u64, body: &mut dyn Read) -> anyhow::Result<()> {
        let Some(placement) = self.placements.get(path) else {
            return Ok(());
        };
        let digest = self.digests[path];
        AtomicFile::remove_stale(&placement.dest)?;
        if file_matches(&placement.dest, &digest, placement.mode) {
            self.unchanged.push(Placed {
                placement: placement.clone(),
                digest,
                written: false,
            });
            return Ok(());
        }
        if let Some(dir) = placement.dest.parent() {
            self.changes.create_dir_all(dir)?;
        }
        let mut file = AtomicFile::create(&placement.dest)
            .with_context(|| format!("staging {}", placement.host_path))?;
        file.set_mode(placement.mode)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file.file());
        std::io::copy(body, &mut out)
            .with_context(|| format!("staging {} from {path}", placement.host_path))?;
        out.flush()?;
        drop(out);
        self.current = Some((path.to_string(), file));
        Ok(())
    }

    fn verified(&mut self, path: &str, hashed: Hashed) -> anyhow::Result<()> {
        if let Some((p, file)) = self.current.take() {
            if p != path {
                bail!("internal error: verified {path} while staging {p}");
            }
            let placement = self.placements[path].clone();
            self.staged.push((
                file,
                Placed {
                    placement,
                    digest: hashed.digest,
                    written: true,
                },
            ));
        }
        Ok(())
    }
}

/// Writes the bundle's image layout as one OCI-layout tar while it streams,
/// for k3s's embedded containerd, which imports the archives in
/// `/var/lib/rancher/k3s/agent/images/` when it starts (v1.20 reads `.tar`).
pub struct ArchiveStager {
    placement: Placement,
    tar: Option<tar::Builder<std::io::BufWriter<std::fs::File>>>,
    file: Option<AtomicFile>,
}

impl ArchiveStager {
    pub fn new(placement: Placement, changes: &mut Changes) -> anyhow::Result<Self> {
        if let Some(dir) = placement.dest.parent() {
            changes.create_dir_all(dir)?;
        }
        AtomicFile::remove_stale(&placement.dest)?;
        let mut file = AtomicFile::create(&placement.dest)
            .with_context(|| format!("staging {}", placement.host_path))?;
        file.set_mode(placement.mode)?;
        let writer = std::io::BufWriter::with_capacity(1 << 20, file.file().try_clone()?);
        Ok(Self {
            placement,
            tar: Some(tar::Builder::new(writer)),
            file: Some(file),
        })
    }

    /// Finishes the archive and renames it into place, unless the file there
    /// already holds the same bytes.
    pub fn publish(mut self) -> anyhow::Result<Placed> {
        let tar = self.tar.take().expect("archive open until published");
        let writer = tar.into_inner()?;
        writer.into_inner().map_err(|e| e.into_error())?;
        let file = self.file.take().expect("archive open until published");
        let hashed = airgap_bundle::digest::hash_file(file.temp_path())?;
        let written = !file_matches(&self.placement.dest, &hashed.digest, self.placement.mode);
        if written {
            file.commit()
                .with_context(|| format!("installing {}", self.placement.host_path))?;
        }
        Ok(Placed {
            placement: self.placement.clone(),
            digest: hashed.digest,
            written,
        })
    }
}

impl EntrySink for ArchiveStager {
    fn begin(&mut self, _header: &Header) -> anyhow::Result<()> {
        Ok(())
    }

    fn entry(&mut self, path: &str, size: u64, body: &mut dyn Read) -> anyhow::Result<()> {
        let Some(name) = path.strip_prefix("images/") else {
            return Ok(());
        };
        let tar = self.tar.as_mut().expect("archive open until published");
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(0);
        tar.append_data(&mut h, name, body)
            .with_context(|| format!("writing {name} into {}", self.placement.host_path))?;
        Ok(())
    }

    fn verified(&mut self, _path: &str, _hashed: Hashed) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Hands each entry to several sinks in turn. Each sink takes only the paths
/// that are its own and ignores the rest, and no two sinks of one install
/// want the same path (blobs go to containerd or to the archive, never both),
/// so the one that wants an entry reads it and the others see nothing of it.
pub struct Fanout<'a> {
    pub sinks: Vec<&'a mut dyn EntrySink>,
}

impl EntrySink for Fanout<'_> {
    fn begin(&mut self, header: &Header) -> anyhow::Result<()> {
        for s in &mut self.sinks {
            s.begin(header)?;
        }
        Ok(())
    }

    fn entry(&mut self, path: &str, size: u64, body: &mut dyn Read) -> anyhow::Result<()> {
        for s in &mut self.sinks {
            s.entry(path, size, body)?;
        }
        Ok(())
    }

    fn verified(&mut self, path: &str, hashed: Hashed) -> anyhow::Result<()> {
        for s in &mut self.sinks {
            s.verified(path, hashed)?;
        }
        Ok(())
    }
}
