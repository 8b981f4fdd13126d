//! Disk space: what the install will write where, predicted from
//! `bundle.json` for the preflight, and the explanation put on an error a
//! full file system caused ("no space left on <path>, needed N more"), from
//! the same prediction and what is free once the run undid its writes.

use super::options::Runtime;
use crate::layout;
use crate::preflight::{self, SpaceNeed};
use crate::root::{file_matches, HostRoot};
use crate::stage::Placement;
use airgap_bundle::meta::{BundleMeta, FileRole};
use airgap_bundle::space::{self, human, Needed, NoSpace};
use airgap_bundle::sums::Sums;
use std::collections::BTreeMap;

/// What the install writes, and where: the staged files (but those already
/// in place), the embedded runtime's image archive, the generated files with
/// the record's reservation and, for an external containerd on this host,
/// its content and snapshots (a containerd under another root keeps its
/// state where it was started).
pub(super) fn space_needs(
    meta: &BundleMeta,
    sums: &Sums,
    root: &HostRoot,
    placements: &BTreeMap<String, Placement>,
    runtime: Runtime,
    record_reserve: u64,
) -> Vec<SpaceNeed> {
    let mut needs: Vec<SpaceNeed> = Vec::new();
    for (entry, p) in placements {
        let Some(file) = meta.files.iter().find(|f| &f.path == entry) else {
            continue;
        };
        if sums
            .get(entry)
            .is_some_and(|d| file_matches(&p.dest, d, p.mode))
        {
            continue;
        }
        let what = match file.role {
            FileRole::K3sBinary => "the k3s binary",
            _ => "the manifests",
        };
        needs.push(SpaceNeed::files(p.dest.clone(), &[file.size], what));
    }
    let blobs = meta.totals.blob_bytes;
    match runtime {
        Runtime::Embedded => needs.push(SpaceNeed::files(
            root.path(&format!("{}/airgap-images.tar", layout::AGENT_IMAGES_DIR)),
            // Each blob's tar header and padding, the layout's index.
            &[blobs + 1024 * meta.totals.blobs + (64 << 10)],
            "the image archive",
        )),
        // Content plus, roughly, as much again unpacked (layers are compressed).
        Runtime::External if root.is_host() => needs.push(SpaceNeed {
            path: root.path("/var/lib/containerd"),
            bytes: blobs * 3,
            what: "containerd's content and snapshots".into(),
        }),
        Runtime::External => {}
    }
    // Config, registries, sysctl, modules, unit, env file, journal; record.
    needs.push(SpaceNeed {
        path: root.path(layout::AIRGAP_DIR),
        bytes: 10 * preflight::BLOCK + record_reserve,
        what: "config, service and record files".into(),
    });
    needs
}

/// What the error handler of the install needs to explain a full disk.
#[derive(Default)]
pub(super) struct SpaceState {
    pub needs: Vec<SpaceNeed>,
    /// Files renamed into place or images named: past undoing.
    pub published: bool,
}

/// Puts "no space left on <path>, needed N more" on an error a full file
/// system caused, from the prediction and what is free now.
pub(super) fn explain_full(err: anyhow::Error, state: &SpaceState) -> anyhow::Error {
    space::explain(err, || {
        let (all, short) = preflight::shortfalls(&state.needs);
        let outcome = if state.published {
            "the install was published but not recorded; run it again once there is room"
        } else {
            "nothing was installed, the root is as it was"
        };
        match (short.first(), all.first()) {
            (Some(s), _) => NoSpace {
                path: s.mount.clone(),
                needed: Needed::About(s.missing()),
                detail: format!(
                    "{} need {}, {} is free; {outcome}",
                    s.what.join(", "),
                    human(s.needed),
                    human(s.free)
                ),
            },
            // There was room for what the prediction counts: something else
            // took it meanwhile.
            (None, Some(s)) => NoSpace {
                path: s.mount.clone(),
                needed: Needed::AtLeast(preflight::BLOCK),
                detail: format!(
                    "the install writes about {} there and {} is free now: something else \
                     wrote there meanwhile; {outcome}",
                    human(s.needed),
                    human(s.free)
                ),
            },
            (None, None) => NoSpace {
                path: "/".into(),
                needed: Needed::AtLeast(preflight::BLOCK),
                detail: outcome.into(),
            },
        }
    })
}
