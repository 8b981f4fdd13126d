//! The install plan as the operator sees it: `--dry-run` prints the plan
//! the real install carries out (the same files, images and start), and a
//! bundle streamed on standard input installs in the same single pass.

use crate::install::{assert_containerd_untouched, assert_not_started, assert_server_ready};
use crate::support;
use std::collections::BTreeSet;
use std::path::Path;
use support::install::*;
use support::{assert_ok, stdout};

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let bed = InstallBed::start();
    let before = tree(bed.root());
    let mut args = bed.server_args();
    args.insert(0, "--dry-run".into());
    let out = bed.install(&args);
    assert_ok(&out, "airgap install --dry-run");
    let plan = stdout(&out);
    assert!(plan.contains("dry run"), "{plan}");
    for needle in [
        "/usr/local/bin/k3s",
        "/etc/rancher/k3s/config.yaml",
        "/etc/rancher/k3s/registries.yaml",
        "/var/lib/rancher/k3s/server/manifests/",
        "start",
    ] {
        assert!(
            plan.contains(needle),
            "the plan does not name {needle}:\n{plan}"
        );
    }
    for image in &bed.meta.images {
        let name = image.reference.to_string();
        assert!(
            plan.contains(&name),
            "the plan does not name {name}:\n{plan}"
        );
    }
    assert_same_tree(&before, &tree(bed.root()), "--dry-run");
    assert_containerd_untouched(&bed.cd, &Default::default(), "--dry-run");
    assert_not_started(bed.root(), bed.port);
}

/// The files a plan's steps name (`file  PATH ...`).
fn planned_files(plan: &serde_json::Value) -> BTreeSet<String> {
    plan.as_array()
        .expect("the plan is a list of steps")
        .iter()
        .filter_map(|step| step.as_str()?.strip_prefix("file  "))
        .map(|rest| rest.split(' ').next().unwrap_or_default().to_string())
        .collect()
}

/// The image references a plan's steps name (`image REF ...`).
fn planned_images(plan: &serde_json::Value) -> BTreeSet<String> {
    plan.as_array()
        .expect("the plan is a list of steps")
        .iter()
        .filter_map(|step| step.as_str()?.strip_prefix("image "))
        .map(|rest| rest.split(' ').next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn dry_run_prints_the_plan_the_install_carries_out() {
    let bed = InstallBed::start();
    let mut args = bed.server_args();
    args.insert(0, "--json".into());
    let mut dry = args.clone();
    dry.insert(0, "--dry-run".into());
    let out = bed.install(&dry);
    assert_ok(&out, "airgap install --dry-run --json");
    let planned: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(planned["dry_run"], true, "{planned:#}");

    let out = bed.install(&args);
    assert_ok(&out, "airgap install --json");
    let done: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(done["dry_run"], false, "{done:#}");
    assert_eq!(
        planned["plan"], done["plan"],
        "the dry run and the install planned alike"
    );

    // Every file the dry run named was written, and nothing else.
    let files = planned_files(&planned["plan"]);
    let written: BTreeSet<String> = done["files_written"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    assert!(!files.is_empty(), "{planned:#}");
    assert_eq!(files, written, "files planned vs written");
    for f in &files {
        assert!(
            bed.path(f.trim_start_matches('/')).is_file(),
            "{f} is missing"
        );
    }

    // Every image it named is in containerd, and only those.
    let named: BTreeSet<String> = done["images"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["names"].as_array().unwrap().clone())
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        planned_images(&planned["plan"]),
        named,
        "images planned vs named"
    );
    let listed: BTreeSet<String> = images(&bed.cd).into_keys().collect();
    assert_eq!(named, listed, "images named vs listed by ctr");
}

#[test]
fn a_bundle_on_standard_input_installs_in_one_pass() {
    let bed = InstallBed::start();
    let mut cmd = bed.install_cmd(Path::new("-"), bed.root(), &bed.server_args());
    let bundle = std::fs::File::open(&bed.bundle).unwrap();
    // Not `run`, which closes stdin: the bundle is the child's stdin.
    let out = cmd.stdin(bundle).output().unwrap();
    assert_ok(&out, "airgap install --offline - < bundle");
    assert_server_ready(bed.root(), bed.port);
    let listed = images(&bed.cd);
    for image in &bed.meta.images {
        assert!(
            listed.contains_key(&image.reference.to_string()),
            "{} is missing: {listed:#?}",
            image.reference
        );
    }
    stop_standins(bed.root());
}

/// A bundle cut off on standard input (a dropped SSH connection) is refused
/// like a truncated file: nothing written, nothing left in containerd.
#[test]
fn a_bundle_cut_off_on_standard_input_is_refused_and_changes_nothing() {
    let bed = InstallBed::start();
    let before = tree(bed.root());
    let bytes = std::fs::read(&bed.bundle).unwrap();
    let cut = bed.scratch.path().join("cut.airgap.tar.zst");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let mut cmd = bed.install_cmd(Path::new("-"), bed.root(), &bed.server_args());
    let out = cmd
        .stdin(std::fs::File::open(&cut).unwrap())
        .output()
        .unwrap();
    support::assert_fails_naming(
        &out,
        "a bundle cut off on stdin",
        &["<standard input>", "not valid"],
    );
    assert_same_tree(&before, &tree(bed.root()), "a bundle cut off on stdin");
    assert_containerd_untouched(&bed.cd, &Default::default(), "a bundle cut off on stdin");
    assert_not_started(bed.root(), bed.port);
}
