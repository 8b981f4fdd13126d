//! `installer::import` against a real containerd (a private one per test) and
//! a real bundle built from the demo images in a real registry, checked with
//! the real `ctr`.

use airgap_bundle::digest::{Digest, Hashed};
use airgap_bundle::meta::BundleMeta;
use airgap_bundle::read::{read_header, EntrySink, Trust};
use airgap_bundle::sign;
use airgap_bundle::source::open_bundle;
use airgap_bundler::build::{build, BuildOptions};
use airgap_bundler::pins::BuildChecks;
use airgap_bundler::progress::NoProgress;
use airgap_bundler::registry::RegistryConfig;
use airgap_bundler::release::ReleaseSource;
use airgap_installer::import::{
    import_bundle, ImageOutcome, ImportOptions, ImportReport, ImportSink, Importer, NotRunning,
};
use airgap_testbed::containerd::Containerd;
use airgap_testbed::seed::{self, BUSYBOX_GREETING, BUSYBOX_REF};
use airgap_testbed::{Registry, ReleaseServer};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// The demo bundle (amd64, uncompressed so a test can corrupt it in place)
/// and the key that signed it, built once per test binary.
struct Fixture {
    bundle: PathBuf,
    public_key: PathBuf,
    meta: BundleMeta,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| build_fixture().expect("building the demo bundle"))
}

fn build_fixture() -> anyhow::Result<Fixture> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("import-fixture");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    for entry in std::fs::read_dir(root.join("manifests"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), manifests.join(entry.file_name()))?;
    }
    std::fs::copy(root.join("images.lock"), dir.join("images.lock"))?;
    let keys = sign::generate(None)?;
    std::fs::write(dir.join("site.key"), &keys.secret_key_file)?;
    std::fs::write(dir.join("site.pub"), &keys.public_key_file)?;

    let registry = Registry::start()?;
    seed::seed_demo(&registry)?;
    let release_root = dir.join("release");
    std::fs::create_dir_all(&release_root)?;
    seed::write_demo_release(&release_root, seed::K3S_STAND_IN.as_bytes())?;
    let release = ReleaseServer::start(&release_root)?;
    let bundle = dir.join("demo.airgap.tar");
    let opts = BuildOptions {
        version: "v1.20.6".into(),
        arches: vec!["amd64".into()],
        output: Some(bundle.clone()),
        split: None,
        sign_key: dir.join("site.key"),
        key_password: None,
        release: ReleaseSource {
            base_url: release.url(),
            ..ReleaseSource::default()
        },
        registry: RegistryConfig {
            mirrors: vec![("docker.io".into(), format!("http://{}", registry.addr()))],
            jobs: 4,
            ..RegistryConfig::default()
        },
        compression: airgap_bundle::write::Compression::None,
        jobs: 4,
        manifests_dir: manifests,
        lock_path: dir.join("images.lock"),
        source_date_epoch: None,
        cache: None,
        rebuild: false,
    };
    let rt = tokio::runtime::Runtime::new()?;
    build(&opts, &BuildChecks::default(), &NoProgress, rt.handle())?;
    let public_key = dir.join("site.pub");
    let trust = Trust::Key(sign::load_public_key(&public_key)?);
    let meta = read_header(open_bundle(&bundle)?, &trust)?.meta;
    Ok(Fixture {
        bundle,
        public_key,
        meta,
    })
}

fn trust(f: &Fixture) -> Trust {
    Trust::Key(sign::load_public_key(&f.public_key).unwrap())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn import(
    rt: &tokio::runtime::Runtime,
    cd: &Containerd,
    bundle: &Path,
) -> anyhow::Result<ImportReport> {
    let input = open_bundle(bundle)?;
    rt.block_on(import_bundle(
        input,
        trust(fixture()),
        ImportOptions::new(cd.socket()),
    ))
}

fn ctr(cd: &Containerd, args: &[&str]) -> String {
    cd.ctr_ok(args).unwrap()
}

/// `ctr ... ls` output without its header line.
fn rows(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// Content as digest and sorted labels (`ctr` prints them in map order,
/// and its AGE column moves).
fn content_state(cd: &Containerd) -> BTreeSet<(String, String)> {
    rows(&ctr(cd, &["-n", "k8s.io", "content", "ls"]))
        .into_iter()
        .map(|r| {
            let mut labels: Vec<&str> =
                r.last().map(|l| l.split(',').collect()).unwrap_or_default();
            labels.sort();
            (r[0].clone(), labels.join(","))
        })
        .collect()
}

fn leases(cd: &Containerd) -> String {
    ctr(cd, &["-n", "k8s.io", "leases", "ls"])
}

#[test]
fn imports_unpacks_and_runs_then_changes_nothing_the_second_time() {
    let f = fixture();
    let cd = Containerd::start().unwrap();
    let rt = runtime();

    let report = import(&rt, &cd, &f.bundle).unwrap();
    assert_eq!(report.images.len(), f.meta.images.len(), "{report:#?}");
    assert!(report.skipped.is_empty(), "{report:#?}");
    assert!(
        report.blobs_written > 0 && report.blobs_present == 0,
        "{report:#?}"
    );
    for image in &report.images {
        assert_eq!(image.outcome, ImageOutcome::Created, "{image:?}");
        assert!(image.unpacked.applied <= image.unpacked.layers, "{image:?}");
    }

    // Every image by its full reference, with its digest and the CRI labels.
    let listed = rows(&ctr(&cd, &["-n", "k8s.io", "images", "ls"]));
    for image in &f.meta.images {
        let name = image.reference.to_string();
        let row = listed
            .iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {listed:?}"));
        assert_eq!(row[2], image.digest.to_string(), "{name}");
        let labels = row.last().unwrap();
        assert!(
            labels.contains("io.cri-containerd.image=managed"),
            "{name}: {labels}"
        );
        let sandbox = image.sources.iter().any(|s| s == "sandbox");
        assert_eq!(
            labels.contains("io.cri-containerd.pinned=pinned"),
            sandbox,
            "{name}: {labels}"
        );
    }
    assert_eq!(listed.len(), f.meta.images.len(), "{listed:?}");
    assert!(f
        .meta
        .images
        .iter()
        .any(|i| i.sources.iter().any(|s| s == "sandbox")));

    // containerd's own view: complete and unpacked, snapshots by chain ID.
    let checked = rows(&ctr(&cd, &["-n", "k8s.io", "images", "check"]));
    for row in &checked {
        assert!(row.join(" ").contains("complete"), "{row:?}");
        assert_eq!(
            row.last().map(String::as_str),
            Some("true"),
            "not unpacked: {row:?}"
        );
    }
    let snapshots = ctr(
        &cd,
        &[
            "-n",
            "k8s.io",
            "snapshots",
            "--snapshotter",
            "overlayfs",
            "ls",
        ],
    );
    for image in &report.images {
        let chain = image.unpacked.chain_id.to_string();
        assert!(snapshots.contains(&chain), "{chain} missing:\n{snapshots}");
    }
    // Shared layers (redis master and slave) are applied once.
    let committed = rows(&snapshots)
        .iter()
        .filter(|r| r.last().map(String::as_str) == Some("Committed"))
        .count();
    let applied: usize = report.images.iter().map(|i| i.unpacked.applied).sum();
    let layers: usize = report.images.iter().map(|i| i.unpacked.layers).sum();
    assert_eq!(applied, committed, "{snapshots}");
    assert!(applied < layers, "no layer was shared: {report:#?}");
    let content = content_state(&cd);
    assert!(
        content
            .iter()
            .any(|(_, l)| l.contains("containerd.io/gc.ref.snapshot.overlayfs=")),
        "{content:?}"
    );
    assert!(
        content
            .iter()
            .any(|(_, l)| l.contains("containerd.io/uncompressed=sha256:")),
        "{content:?}"
    );
    assert!(!leases(&cd).contains("airgap-import"), "{}", leases(&cd));

    // A second import writes nothing and changes nothing.
    let images_before = ctr(&cd, &["-n", "k8s.io", "images", "ls"]);
    let again = import(&rt, &cd, &f.bundle).unwrap();
    assert_eq!(again.blobs_written, 0, "{again:#?}");
    assert_eq!(again.blobs_present, report.blobs_written, "{again:#?}");
    for image in &again.images {
        assert_eq!(image.outcome, ImageOutcome::Unchanged, "{image:?}");
        assert_eq!(image.unpacked.applied, 0, "{image:?}");
    }
    assert_eq!(ctr(&cd, &["-n", "k8s.io", "images", "ls"]), images_before);
    assert_eq!(content_state(&cd), content);
    assert_eq!(
        ctr(
            &cd,
            &[
                "-n",
                "k8s.io",
                "snapshots",
                "--snapshotter",
                "overlayfs",
                "ls"
            ]
        ),
        snapshots
    );
    assert!(!leases(&cd).contains("airgap-import"), "{}", leases(&cd));

    // The unpacked busybox really runs.
    let id = Containerd::unique_id("import-busybox");
    let out = ctr(&cd, &["-n", "k8s.io", "run", "--rm", BUSYBOX_REF, &id]);
    assert!(out.contains(BUSYBOX_GREETING), "{out}");
}

/// The tar header offset of entry `name` (headers are 512-byte aligned; the
/// same text also appears inside SHA256SUMS).
fn entry_offset(bytes: &[u8], name: &str) -> usize {
    let needle = name.as_bytes();
    (0..bytes.len())
        .step_by(512)
        .find(|&at| bytes[at..].starts_with(needle) && bytes.get(at + needle.len()) == Some(&0))
        .unwrap_or_else(|| panic!("no tar header for {name}"))
}

#[test]
fn a_tampered_layer_leaves_nothing_behind() {
    let f = fixture();
    let busybox = f
        .meta
        .images
        .iter()
        .find(|i| i.reference.to_string() == BUSYBOX_REF)
        .unwrap();
    let layer = *busybox.platforms[0].blobs.last().unwrap();
    let path = format!("images/{}", layer.blob_path());
    let mut bytes = std::fs::read(&f.bundle).unwrap();
    let at = entry_offset(&bytes, &path) + 512 + 100;
    bytes[at] ^= 0x20;
    let dir = tempfile::tempdir().unwrap();
    let tampered = dir.path().join("tampered.airgap.tar");
    std::fs::write(&tampered, &bytes).unwrap();

    let cd = Containerd::start().unwrap();
    let rt = runtime();
    let err = import(&rt, &cd, &tampered).unwrap_err();
    let msg = format!("{err:#}");
    eprintln!("{msg}");
    assert!(msg.contains(&format!("hash mismatch for {path}")), "{msg}");
    assert_eq!(ctr(&cd, &["-n", "k8s.io", "images", "ls", "-q"]).trim(), "");
    assert!(!leases(&cd).contains("airgap-import"), "{}", leases(&cd));
    // The blobs committed before the bad one went with the lease.
    assert_eq!(content_state(&cd), BTreeSet::new());
}

#[test]
fn containerd_refuses_bytes_that_do_not_match_their_digest() {
    let cd = Containerd::start().unwrap();
    let rt = runtime();
    let mut importer = rt
        .block_on(Importer::connect(ImportOptions::new(cd.socket())))
        .unwrap();
    rt.block_on(importer.begin()).unwrap();

    // Straight through the client.
    let good = b"the bytes the bundle promised".to_vec();
    let digest = Digest::of(&good);
    let mut writer = rt
        .block_on(importer.open_blob(&digest, good.len() as u64))
        .unwrap()
        .unwrap();
    let mut evil = good.clone();
    evil[0] ^= 1;
    rt.block_on(writer.write(evil.clone())).unwrap();
    let err = rt.block_on(writer.commit(Default::default())).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!("containerd refused blob {digest}")),
        "{msg}"
    );
    assert!(!rt.block_on(importer.has_blob(&digest)).unwrap());

    // Through the sink, as if SHA256SUMS had vouched for the wrong bytes.
    let mut sink = ImportSink::new(importer, rt.handle().clone());
    let path = format!("images/{}", digest.blob_path());
    sink.entry(&path, evil.len() as u64, &mut &evil[..])
        .unwrap();
    let err = sink
        .verified(
            &path,
            Hashed {
                digest,
                size: evil.len() as u64,
            },
        )
        .unwrap_err();
    let msg = format!("{err:#}");
    eprintln!("{msg}");
    assert!(msg.contains(&digest.to_string()), "{msg}");
    // And an entry whose bytes do not hash to its name.
    sink.entry(&path, evil.len() as u64, &mut &evil[..])
        .unwrap();
    let err = sink
        .verified(
            &path,
            Hashed {
                digest: Digest::of(&evil),
                size: evil.len() as u64,
            },
        )
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("not to the digest it is named by"),
        "{err:#}"
    );
    rt.block_on(sink.abort()).unwrap();
    assert_eq!(content_state(&cd), BTreeSet::new());
    assert!(!leases(&cd).contains("airgap-import"), "{}", leases(&cd));
}

#[test]
fn a_missing_or_silent_containerd_is_reported_before_anything_is_written() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let quick = |socket: &Path| {
        let mut opts = ImportOptions::new(socket);
        opts.timeout = Duration::from_millis(500);
        opts
    };
    let expect_not_running = |socket: &Path, why: &str| {
        let err = rt
            .block_on(Importer::connect(quick(socket)))
            .err()
            .unwrap_or_else(|| panic!("{why}: connected"));
        let msg = format!("{err:#}");
        assert!(
            msg.starts_with(&format!(
                "containerd is not running at {}: ",
                socket.display()
            )),
            "{why}: {msg}"
        );
        assert!(err.downcast_ref::<NotRunning>().is_some(), "{why}: {msg}");
        eprintln!("{why}: {msg}");
        msg
    };

    let missing = dir.path().join("missing.sock");
    expect_not_running(&missing, "no socket");

    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let msg = expect_not_running(&stale, "nobody listening");
    assert!(msg.to_lowercase().contains("refused"), "{msg}");

    // Accepts connections but never answers.
    let silent = dir.path().join("silent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&silent).unwrap();
    let msg = expect_not_running(&silent, "silent");
    assert!(msg.contains("within"), "{msg}");
}

#[test]
fn a_missing_snapshotter_is_reported() {
    let cd = Containerd::start().unwrap();
    let rt = runtime();
    let mut opts = ImportOptions::new(cd.socket());
    opts.snapshotter = "nosuch".into();
    let err = rt.block_on(Importer::connect(opts)).err().unwrap();
    let msg = format!("{err:#}");
    eprintln!("{msg}");
    assert!(msg.contains("has no snapshotter \"nosuch\""), "{msg}");
    assert!(msg.contains("overlayfs"), "{msg}");
}
