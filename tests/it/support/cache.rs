//! Helpers of the cache, resume and registry-auth tests: the testbed's own
//! download cache, builds with a fixed `SOURCE_DATE_EPOCH`, the biggest
//! layer of the demo set, and swapping in a differently configured registry.

use super::{assert_ok, run, Testbed};
use airgap_testbed::seed::{self, BlobInfo};
use airgap_testbed::Registry;
use std::path::PathBuf;
use std::process::Output;

/// The build time every reproducible build here uses.
pub const EPOCH: &str = "1600000000";

/// The testbed's download cache (`$XDG_CACHE_HOME/airgap` of its builds).
pub fn cache_dir(tb: &Testbed) -> PathBuf {
    tb.work().join("cache").join("airgap")
}

/// A build with `SOURCE_DATE_EPOCH` set.
pub fn build_at_epoch(tb: &Testbed, name: &str, extra: &[&str]) -> Output {
    let mut cmd = tb.build_command(name, extra);
    run(cmd.env("SOURCE_DATE_EPOCH", EPOCH))
}

/// [`build_at_epoch`] that must succeed; returns the bundle's bytes.
#[track_caller]
pub fn build_at_epoch_ok(tb: &Testbed, name: &str, extra: &[&str]) -> Vec<u8> {
    let out = build_at_epoch(tb, name, extra);
    assert_ok(&out, &format!("airgap bundle build -o {name}"));
    std::fs::read(tb.out_dir().join(name)).unwrap()
}

/// The biggest amd64 layer of the demo set, with its repository.
pub fn biggest_layer(tb: &Testbed) -> (String, BlobInfo) {
    tb.seeded
        .images
        .iter()
        .filter_map(|i| Some((i, i.platform("amd64")?)))
        .flat_map(|(i, p)| {
            p.layers
                .iter()
                .map(move |l| (i.repository.clone(), l.clone()))
        })
        .max_by_key(|(_, l)| l.size)
        .expect("the demo set has layers")
}

/// Replaces the testbed's registry with `registry`, seeded with the demo set
/// (the old one stops).
pub fn swap_registry(tb: &mut Testbed, registry: Registry) {
    tb.seeded = seed::seed_demo(&registry).expect("seeding the new registry");
    tb.registry = registry;
}

/// Asserts that two bundles are byte-identical files (signatures included:
/// airgap signs deterministically); when they are not, the failure lists the
/// entries that differ, extracted with tar.
#[track_caller]
pub fn assert_same_bundle(tb: &Testbed, a: &str, b: &str) {
    let (pa, pb) = (tb.out_dir().join(a), tb.out_dir().join(b));
    let (ba, bb) = (std::fs::read(&pa).unwrap(), std::fs::read(&pb).unwrap());
    if ba == bb {
        return;
    }
    let (da, db) = (
        tb.work().join(format!("x-{a}")),
        tb.work().join(format!("x-{b}")),
    );
    super::extract(&pa, &da);
    super::extract(&pb, &db);
    let mut differ = Vec::new();
    let entries = walk(&da);
    assert_eq!(entries.len(), walk(&db).len(), "{a} and {b}: entry counts");
    for entry in entries {
        let rel = entry.strip_prefix(&da).unwrap();
        if std::fs::read(&entry).ok() != std::fs::read(db.join(rel)).ok() {
            differ.push(rel.display().to_string());
        }
    }
    panic!("{a} and {b} are not byte-identical; entries that differ: {differ:?}");
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
