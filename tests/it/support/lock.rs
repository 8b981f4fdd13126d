//! Helpers of the lock and lint tests: `airgap bundle lock` / `lint` / a
//! multi-arch `build` against a [`Testbed`], reading `images.lock`, writing
//! manifests, and moving a tag in the registry (a new image pushed under an
//! existing tag).

use super::{airgap, run, Testbed, VERSION};
use airgap_bundle::digest::Digest;
use airgap_testbed::image::{note_layer, ImageSpec, Kind};
use airgap_testbed::seed;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

/// `airgap bundle lock` against the testbed's registry and release, for
/// `arches` (comma-separated); `extra` adds flags (`--check`, `--json`).
pub fn lock_command(tb: &Testbed, arches: &str, extra: &[&str]) -> Command {
    let mut cmd = tb.rig_command(&["bundle", "lock", "--version", VERSION, "--arch", arches]);
    cmd.args(extra);
    cmd
}

pub fn lock(tb: &Testbed, arches: &str, extra: &[&str]) -> Output {
    run(&mut lock_command(tb, arches, extra))
}

/// `airgap bundle lint` of the testbed's manifests and lock.
pub fn lint(tb: &Testbed, extra: &[&str]) -> Output {
    run(airgap()
        .current_dir(tb.work())
        .args(["bundle", "lint", "--manifests"])
        .arg(tb.manifests_dir())
        .arg("--lock")
        .arg(tb.lock_path())
        .args(extra))
}

/// `airgap bundle build` for `arches` (comma-separated) into `out/<name>`.
pub fn build_for(tb: &Testbed, arches: &str, name: &str, extra: &[&str]) -> Output {
    run(&mut tb.build_command_for(arches, name, &tb.key(), extra))
}

/// The lock file as JSON.
pub fn read_lock(tb: &Testbed) -> Value {
    serde_json::from_slice(&std::fs::read(tb.lock_path()).unwrap()).unwrap()
}

/// The lock entry for `reference`; panics when there is none.
#[track_caller]
pub fn entry(lock: &Value, reference: &str) -> Value {
    lock["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["reference"] == reference)
        .unwrap_or_else(|| panic!("{reference} not in the lock: {lock:#}"))
        .clone()
}

/// The references in the lock, in file order.
pub fn references(lock: &Value) -> Vec<String> {
    lock["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["reference"].as_str().unwrap().to_string())
        .collect()
}

/// Adds an entry (JSON) to the lock file.
pub fn add_lock_entry(tb: &Testbed, entry: Value) {
    let mut lock = read_lock(tb);
    lock["images"].as_array_mut().unwrap().push(entry);
    std::fs::write(
        tb.lock_path(),
        serde_json::to_string_pretty(&lock).unwrap() + "\n",
    )
    .unwrap();
}

/// Writes `manifests/<name>`; returns its path.
pub fn write_manifest(tb: &Testbed, name: &str, text: &str) -> PathBuf {
    let path = tb.manifests_dir().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Pushes a new amd64 image as `docker.io/<repository>:<tag>` (moving the
/// tag); returns the new manifest digest.
pub fn move_tag(tb: &Testbed, repository: &str, tag: &str) -> Digest {
    let image = ImageSpec::new(Kind::Docker, "amd64")
        .label("org.opencontainers.image.title", "moved")
        .cmd(&["/moved"])
        .build(vec![note_layer(
            "/moved",
            "a newer build under the same tag\n",
        )
        .unwrap()]);
    seed::push_image(&tb.registry.client(), repository, tag, &image)
        .unwrap()
        .digest
}
