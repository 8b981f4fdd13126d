//! Flaky registries, through the rig's fault proxy, against the real
//! `airgap bundle build` with a short `--registry-timeout`: a download that
//! stalls once is retried from where it stopped and the bundle verifies; one
//! that stalls every time fails naming the registry, the image and the
//! timeout; a registry that serves the wrong bytes for a blob (a flipped
//! byte, or another blob) fails naming the digest expected and what came.
//! Every failure leaves no bundle and no temp file in the output dir, and
//! what it left in the download cache serves a later build that verifies.
//! A transient 503 and a connection reset mid-blob are covered in
//! `tests/cache_auth.rs`; here a 429 and a stall on manifests are retried too.
//! A manifest body over its limit is refused while it streams, whether its
//! `Content-Length` says so or not.

use crate::support;

use airgap_bundle::digest::Digest;
use airgap_testbed::proxy::Proxy;
use airgap_testbed::seed::BlobInfo;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::cache::{
    assert_same_bundle, biggest_layer, build_at_epoch, build_at_epoch_ok, cache_dir,
};
use support::{assert_fails_naming, assert_ok, Testbed};

/// The read timeout the builds here use, in seconds.
const TIMEOUT: &str = "1";

/// A testbed whose builds pull through a fault proxy, and the layer the
/// faults are aimed at (the demo set's biggest).
struct Rig {
    tb: Testbed,
    proxy: Proxy,
    repo: String,
    layer: BlobInfo,
}

impl Rig {
    fn start() -> Rig {
        let tb = Testbed::start();
        let proxy = Proxy::start(tb.registry.addr()).unwrap();
        let (repo, layer) = biggest_layer(&tb);
        assert!(layer.size > 10_000, "a layer worth stalling: {layer:?}");
        Rig {
            tb,
            proxy,
            repo,
            layer,
        }
    }

    /// `--registry-mirror` through the proxy and a short read timeout.
    fn flags(&self) -> [String; 4] {
        [
            "--registry-mirror".into(),
            format!("docker.io={}", self.proxy.url()),
            "--registry-timeout".into(),
            TIMEOUT.into(),
        ]
    }

    fn build(&self, name: &str, extra: &[&str]) -> std::process::Output {
        let flags = self.flags();
        let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
        args.extend(extra);
        build_at_epoch(&self.tb, name, &args)
    }

    fn build_ok(&self, name: &str) -> PathBuf {
        let flags = self.flags();
        let args: Vec<&str> = flags.iter().map(String::as_str).collect();
        build_at_epoch_ok(&self.tb, name, &args);
        let path = self.tb.out_dir().join(name);
        assert_ok(&self.tb.verify(&path), &format!("verify {name}"));
        path
    }

    /// `/v2/<repo>/blobs/<digest>` of the layer.
    fn path(&self) -> String {
        format!("/v2/{}/blobs/{}", self.repo, self.layer.digest)
    }

    /// The layer's bytes, as the registry stores them.
    fn layer_bytes(&self) -> Vec<u8> {
        std::fs::read(self.tb.registry.blob_data_path(&self.layer.digest)).unwrap()
    }

    fn cached(&self) -> PathBuf {
        cache_dir(&self.tb)
            .join("blobs/sha256")
            .join(self.layer.digest.hex())
    }

    fn partial(&self) -> PathBuf {
        cache_dir(&self.tb)
            .join("partial")
            .join(self.layer.digest.hex())
    }
}

#[test]
fn a_download_that_stalls_once_is_resumed_and_the_bundle_verifies() {
    let rig = Rig::start();
    let at = rig.layer.size / 2;
    rig.proxy
        .stall(&rig.layer.digest.hex(), at, 1, Duration::from_secs(60));
    let started = Instant::now();
    rig.build_ok("stalled.airgap.tar.zst");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "waited for the timeout: {took:?}"
    );

    let asked = rig.proxy.forwarded_matching(&rig.path());
    eprintln!("requests for the layer: {asked:#?}");
    assert_eq!(asked.len(), 2, "stalled, then the rest: {asked:?}");
    let (stalled, rest) = (&asked[0], &asked[1]);
    assert!(stalled.stalled && stalled.range.is_none());
    assert_eq!(stalled.body_bytes, at);
    assert_eq!(rest.range.as_deref(), Some(format!("bytes={at}-").as_str()));
    assert_eq!((rest.status, rest.body_bytes), (206, rig.layer.size - at));

    // The cache holds the layer whole and right, and nothing half done.
    let cached = std::fs::read(rig.cached()).unwrap();
    assert_eq!(Digest::of(&cached), rig.layer.digest);
    assert!(!rig.partial().exists());

    // A later build, with the registry gone, comes from that cache.
    let mut tb = rig.tb;
    tb.registry.stop();
    build_at_epoch_ok(&tb, "again.airgap.tar.zst", &[]);
    assert_ok(
        &tb.verify(&tb.out_dir().join("again.airgap.tar.zst")),
        "verify again",
    );
    assert_same_bundle(&tb, "stalled.airgap.tar.zst", "again.airgap.tar.zst");
}

#[test]
fn a_download_that_always_stalls_fails_naming_registry_image_and_timeout() {
    let rig = Rig::start();
    let lock = std::fs::read(rig.tb.lock_path()).unwrap();
    let step = 1000;
    rig.proxy.stall(
        &rig.layer.digest.hex(),
        step,
        u32::MAX,
        Duration::from_secs(60),
    );
    let started = Instant::now();
    let out = rig.build("stalled.airgap.tar.zst", &[]);
    eprintln!("the failing build took {:?}", started.elapsed());
    assert_fails_naming(
        &out,
        "a build against a registry that always stalls",
        &[
            &rig.proxy.addr(),
            &rig.repo,
            &rig.layer.digest.short(),
            "sent nothing for 1s",
            "--registry-timeout",
            "after 5 attempts",
        ],
    );
    rig.tb.assert_no_output(&lock);
    let asked = rig.proxy.forwarded_matching(&rig.path());
    assert_eq!(asked.len(), 5, "{asked:#?}");
    assert!(asked.iter().all(|f| f.stalled && f.body_bytes == step));

    // The bytes it did get are kept to resume from, and they are right.
    let kept = std::fs::read(rig.partial()).unwrap();
    assert_eq!(kept.len() as u64, 5 * step);
    assert_eq!(kept, rig.layer_bytes()[..kept.len()]);
    assert!(!rig.cached().exists());

    // Once the registry behaves, the next build resumes there and verifies.
    rig.proxy.stall("nothing", 0, 0, Duration::ZERO);
    rig.build_ok("resumed.airgap.tar.zst");
    let asked = rig.proxy.forwarded_matching(&rig.path());
    assert_eq!(asked[5].range.as_deref(), Some("bytes=5000-"), "{asked:#?}");
    assert_eq!(
        Digest::of(&std::fs::read(rig.cached()).unwrap()),
        rig.layer.digest
    );
}

#[test]
fn a_wrong_blob_fails_naming_the_digests_and_the_image() {
    let rig = Rig::start();
    let lock = std::fs::read(rig.tb.lock_path()).unwrap();
    let hex = rig.layer.digest.hex();

    // The right size, one byte flipped.
    rig.proxy.corrupt(&hex, u32::MAX);
    let mut flipped = rig.layer_bytes();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    let got = Digest::of(&flipped);
    let out = rig.build("flipped.airgap.tar.zst", &[]);
    let err = assert_fails_naming(
        &out,
        "a build served a flipped byte",
        &[
            &rig.repo,
            &rig.proxy.addr(),
            &format!("expected {}, found {got}", rig.layer.digest),
        ],
    );
    assert!(err.contains("hash mismatch"), "{err}");
    rig.tb.assert_no_output(&lock);
    let asked = rig.proxy.forwarded_matching(&rig.path());
    assert_eq!(
        asked.len(),
        1,
        "a wrong blob is not asked again: {asked:#?}"
    );
    assert!(asked[0].replaced);
    assert!(!rig.cached().exists() && !rig.partial().exists());

    // Another blob of the set, with its own size (from its own repository:
    // the registry serves a blob only through a repository that has it).
    let (other_repo, other) = rig
        .tb
        .seeded
        .images
        .iter()
        .filter_map(|i| Some((&i.repository, i.platform("amd64")?)))
        .flat_map(|(r, p)| p.layers.iter().map(move |l| (r.clone(), l.clone())))
        .find(|(_, l)| l.digest != rig.layer.digest && l.size != rig.layer.size)
        .expect("another layer");
    rig.proxy.serve_instead(
        &hex,
        &format!("/v2/{other_repo}/blobs/{}", other.digest),
        u32::MAX,
    );
    let out = rig.build("other.airgap.tar.zst", &[]);
    let err = assert_fails_naming(
        &out,
        "a build served another blob",
        &[
            &rig.repo,
            &hex,
            &format!("expected {} bytes, found {}", rig.layer.size, other.size),
        ],
    );
    assert!(err.contains("size mismatch"), "{err}");
    rig.tb.assert_no_output(&lock);
    assert!(!rig.cached().exists());
    // Refused on its length before a byte was kept.
    let kept = std::fs::read(rig.partial()).unwrap_or_default();
    assert!(kept.is_empty(), "{} bytes kept", kept.len());

    // Nothing wrong was cached: a good registry gives a good bundle.
    rig.proxy.serve_instead("nothing", "/", 0);
    rig.build_ok("good.airgap.tar.zst");
}

#[test]
fn manifests_throttled_or_stalled_are_retried() {
    let rig = Rig::start();
    rig.proxy.fail("/manifests/", 429, 2);
    rig.proxy
        .stall("/manifests/", 10, 1, Duration::from_secs(60));
    rig.build_ok("throttled.airgap.tar.zst");
    let asked = rig.proxy.forwarded_matching("/manifests/");
    let count = |f: &dyn Fn(&airgap_testbed::proxy::Forwarded) -> bool| {
        asked.iter().filter(|a| f(a)).count()
    };
    assert_eq!(count(&|a| a.status == 429), 2, "{asked:#?}");
    assert_eq!(count(&|a| a.stalled), 1, "{asked:#?}");
    assert!(count(&|a| a.status == 200 && !a.stalled) >= 2, "{asked:#?}");
}

#[test]
fn a_manifest_over_the_limit_is_refused_while_it_streams() {
    // The attack: a registry answers a manifest GET with an endless body.
    // The old code (oci-client's pull_manifest_raw) read it whole into
    // memory and only then compared its size with the limit.
    let rig = Rig::start();
    let lock = std::fs::read(rig.tb.lock_path()).unwrap();
    let path = "/v2/kubeguide/redis-master/manifests/latest";
    let size: u64 = 128 << 20;
    let limit = airgap_bundle::oci::MAX_MANIFEST_BYTES.to_string();
    for (announce, says) in [(true, "Content-Length"), (false, "stopped reading")] {
        rig.proxy.serve_huge(path, size, announce);
        let name = format!("huge-{announce}.airgap.tar.zst");
        let out = rig.build(&name, &[]);
        let asked = rig.proxy.forwarded_matching(path);
        let last = asked.last().expect("the manifest was asked for");
        eprintln!(
            "announced: {announce}: the client took {} of {size} bytes",
            last.body_bytes
        );
        assert!(
            last.body_bytes < size / 4,
            "the client read {} of {size} bytes before refusing",
            last.body_bytes
        );
        assert_fails_naming(
            &out,
            &format!("a build against a {size}-byte manifest (announced: {announce})"),
            &["kubeguide/redis-master", &limit, says],
        );
        rig.tb.assert_no_output(&lock);
    }
    // Final, not retried: one request each.
    assert_eq!(rig.proxy.forwarded_matching(path).len(), 2);
}
