//! containerd crashing and coming back while `airgap install` imports into
//! it. The bundle carries, besides the demo set, an image with a 12 MiB
//! layer; the private containerd is SIGKILLed once 2 MiB of that layer are
//! in its ingest dir, and restarted: at once while the installer is held
//! stopped, after 2 s with the installer running on, or only after the
//! installer gave up waiting; and once more for 2 s while that layer is
//! being unpacked into a snapshot. The install either finishes (the write
//! goes on from what the ingest kept; the unpack is done again), leaving
//! what a clean install leaves, or fails naming the socket, the blob and
//! its image, with the root untouched; run again, it completes and equals a
//! clean install. It never hangs. k3s is the `k3s-standin` TEST DOUBLE;
//! installs use `--no-start`.

use crate::support;

use airgap_bundle::digest::Digest;
use airgap_testbed::containerd::Containerd;
use airgap_testbed::image::random_layer;
use airgap_testbed::{seed, ImageSpec, Kind};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::install::*;
use support::{assert_ok, run};

/// How long an install may take after the restart before it counts as hung.
const HANG: Duration = Duration::from_secs(120);
/// The big layer's file size, and how much of it is in containerd's ingest
/// when containerd is killed.
const BIG: u64 = 12 << 20;
const KILL_AT: u64 = 2 << 20;
/// How long the installer waits for containerd to come back.
const PATIENCE: Duration = Duration::from_secs(30);
const BIG_IMAGE: &str = "docker.io/airgap/big:1.0";

/// Pushes an amd64 image with one 12 MiB (incompressible) layer and a pod
/// using it; returns the layer's digest.
fn add_big_image(tb: &support::Testbed) -> Digest {
    let layer = random_layer(tb.work(), "/data/big.bin", BIG, 7).unwrap();
    let digest = layer.blob.digest;
    let image = ImageSpec::new(Kind::Docker, "amd64")
        .cmd(&["/bin/true"])
        .build(vec![layer]);
    seed::push_image(&tb.registry.client(), "airgap/big", "1.0", &image).unwrap();
    std::fs::write(
        tb.manifests_dir().join("big.yaml"),
        format!(
            "kind: Pod\nmetadata: {{name: big}}\nspec:\n  containers:\n    \
             - {{name: big, image: {BIG_IMAGE}, imagePullPolicy: IfNotPresent}}\n"
        ),
    )
    .unwrap();
    digest
}

/// containerd's ingest dir: one subdir per open write.
fn ingest_dir(cd: &Containerd) -> PathBuf {
    cd.root().join("io.containerd.content.v1.content/ingest")
}

/// An open write holding at least `min` bytes: (its ref, bytes so far).
fn ingest_with_bytes(dir: &Path, min: u64) -> Option<(String, u64)> {
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let size = std::fs::metadata(e.path().join("data")).ok()?.len();
        let reference = std::fs::read_to_string(e.path().join("ref")).ok()?;
        (size >= min).then_some((reference, size))
    })
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

/// How containerd goes away and comes back.
#[derive(Debug, Clone, Copy)]
enum Restart {
    /// The installer is stopped (SIGSTOP) while containerd is killed and
    /// restarted, then continued: it finds its connection gone.
    WhileHeld,
    /// containerd is down for this long while the installer runs on.
    DownFor(Duration),
    /// containerd comes back only after the installer stopped waiting.
    AfterGivingUp,
    /// Down for 2 s while a layer is being unpacked into a snapshot (the
    /// blobs are all in): the unpack is done again.
    WhileUnpacking,
}

/// A snapshot of the overlayfs snapshotter whose files are being written (a
/// layer being applied). Not the moment a snapshot is created: containerd
/// renames its dir into place before it commits its own record, and a
/// crash between the two leaves a dir that makes every later snapshot fail
/// ("failed to rename: file exists") until containerd's garbage collector
/// cleans the snapshotter, which no client call triggers.
fn snapshot_being_filled(cd: &Containerd) -> Option<String> {
    let dir = cd
        .root()
        .join("io.containerd.snapshotter.v1.overlayfs/snapshots");
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.parse::<u64>().ok()?;
        std::fs::read_dir(e.path().join("fs")).ok()?.next()?.ok()?;
        Some(format!("snapshot {name} being filled"))
    })
}

#[test]
fn an_import_survives_or_reports_a_containerd_restart_and_a_rerun_completes() {
    let mut big = None;
    let bed = InstallBed::start_with(|tb| big = Some(add_big_image(tb)));
    let big = big.unwrap();
    let out = bed.install(&no_start_server_args(&bed.cd, bed.port));
    assert_ok(&out, "a clean install");
    let clean = end_state(bed.root(), &bed.cd);
    assert!(!clean.images.is_empty(), "{clean:?}");

    let mut summary = Vec::new();
    for restart in [
        Restart::WhileHeld,
        Restart::DownFor(Duration::from_secs(2)),
        Restart::AfterGivingUp,
        Restart::WhileUnpacking,
    ] {
        let mut cd = Containerd::start().expect("a containerd for this case");
        let root = tempdir("airgap-root-restart-");
        let args = no_start_server_args(&cd, bed.port);
        let (mut child, log) = bed.spawn_install(root.path(), &args);
        let pid = child.0.id();

        // Part of the big layer is in containerd's ingest dir (or, for
        // WhileUnpacking, a layer is being unpacked).
        let ingest = ingest_dir(&cd);
        let deadline = Instant::now() + Duration::from_secs(60);
        let doing = loop {
            let found = match restart {
                Restart::WhileUnpacking => snapshot_being_filled(&cd),
                _ => ingest_with_bytes(&ingest, KILL_AT)
                    .map(|(r, bytes)| format!("writing {r} ({bytes} bytes in)")),
            };
            if let Some(found) = found {
                break found;
            }
            assert!(
                child.0.try_wait().unwrap().is_none(),
                "{restart:?}: the install ended before it wrote a blob:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            assert!(Instant::now() < deadline, "{restart:?}: no ingest in 60 s");
            std::thread::sleep(Duration::from_micros(200));
        };
        let killed = Instant::now();
        match restart {
            Restart::WhileHeld => {
                signal(pid, "-STOP");
                cd.kill().unwrap();
                cd.restart().unwrap();
                signal(pid, "-CONT");
            }
            Restart::DownFor(down) => {
                cd.kill().unwrap();
                std::thread::sleep(down);
                cd.restart().unwrap();
            }
            Restart::WhileUnpacking => {
                cd.kill().unwrap();
                std::thread::sleep(Duration::from_secs(2));
                cd.restart().unwrap();
            }
            Restart::AfterGivingUp => {
                cd.kill().unwrap();
                let deadline = Instant::now() + PATIENCE + HANG;
                while child.0.try_wait().unwrap().is_none() {
                    assert!(
                        Instant::now() < deadline,
                        "the install still waits for containerd after {:?}",
                        PATIENCE + HANG
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                cd.restart().unwrap();
            }
        }
        eprintln!("{restart:?}: killed containerd at {doing}");
        let status = loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                killed.elapsed() < HANG + PATIENCE,
                "{restart:?}: the install hangs after containerd came back:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let err = std::fs::read_to_string(&log).unwrap_or_default();
        let outcome = if status.success() {
            assert_same_state(
                &clean,
                &end_state(root.path(), &cd),
                &format!("{restart:?}: the install that went on"),
            );
            "finished"
        } else {
            let socket = cd.socket().display().to_string();
            let blob = format!("blob {big}");
            let needles = match restart {
                // Which image was being unpacked depends on the timing.
                Restart::WhileUnpacking => vec![socket.as_str(), "lost the connection", "image "],
                _ => vec![socket.as_str(), &blob, BIG_IMAGE, "lost the connection"],
            };
            for needle in needles {
                assert!(
                    err.contains(needle),
                    "{restart:?}: the error does not name {needle:?}:\n{err}"
                );
            }
            assert!(
                !err.contains("is not valid"),
                "{restart:?}: a lost containerd is not an invalid bundle:\n{err}"
            );
            let left = tree(root.path());
            assert!(
                left.is_empty(),
                "{restart:?}: the failed install left {left:?}"
            );
            "failed clearly"
        };
        eprintln!(
            "{restart:?}: the install {outcome} ({status}) {:?} after the kill:\n{}",
            killed.elapsed(),
            err.trim()
        );

        let out = run(&mut bed.install_cmd(&bed.bundle, root.path(), &args));
        assert_ok(&out, &format!("{restart:?}: the install run again"));
        assert_same_state(
            &clean,
            &end_state(root.path(), &cd),
            &format!("{restart:?}: the rerun"),
        );
        match restart {
            Restart::AfterGivingUp => {
                assert_eq!(outcome, "failed clearly", "containerd was gone too long")
            }
            _ => assert_eq!(outcome, "finished", "containerd came back in time"),
        }
        summary.push(format!("{restart:?}: {outcome}, rerun clean"));
        drop(child);
    }
    eprintln!("{}", summary.join("; "));
}
