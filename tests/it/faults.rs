//! Real faults during `airgap install`: SIGKILL at many points of a run,
//! each followed by the same install run again, which must complete and
//! leave exactly what a clean install leaves; and two installs on one root
//! at once, where the second waits for the first and never interleaves.
//! k3s is the `k3s-standin` TEST DOUBLE; installs use `--no-start`, so the
//! comparison is of what the installer writes.

use crate::support;

use airgap_testbed::containerd::Containerd;
use std::process::Stdio;
use std::time::{Duration, Instant};
use support::install::*;
use support::{assert_ok, run, stderr, stdout};

const JOURNAL: &str = "var/lib/rancher/k3s/airgap/install.journal";
/// Kill points tried, spread over one install's run time.
const SCHEDULE: usize = 36;
/// Of which (with the [`PUBLISHED`] ones) at least this many must land
/// while the install runs.
const KILL_POINTS: usize = 20;
/// Files whose appearance is a kill point: a staged file renamed into
/// place, then generated files, in the order the installer writes them.
const PUBLISHED: &[&str] = &[
    "usr/local/bin/k3s",
    "etc/rancher/k3s/config.yaml",
    "etc/rancher/k3s/registries.yaml",
    "etc/sysctl.d/90-k3s-airgap.conf",
];

enum Trigger {
    /// This fraction of the run time (as estimated when the kill is due).
    After(f64),
    WhenExists(&'static str),
}

#[test]
fn an_install_killed_anywhere_completes_when_run_again_as_a_clean_one() {
    let bed = InstallBed::start();
    // A clean install, timed: the kill points are spread over its run.
    let clean_args = no_start_server_args(&bed.cd, bed.port);
    let started = Instant::now();
    let out = bed.install(&clean_args);
    let run_time = started.elapsed();
    assert_ok(&out, "a clean install");
    let clean = end_state(bed.root(), &bed.cd);
    assert!(
        !clean.images.is_empty() && !clean.files.is_empty(),
        "{clean:?}"
    );
    // Other tests of the binary run beside this one: the fastest of three
    // clean runs (each into a fresh containerd and root) is the one that
    // load slowed least, so the kill points land inside a run.
    let mut run_time = run_time;
    for _ in 0..2 {
        let cd = Containerd::start().expect("a containerd for a timed clean install");
        let root = tempdir("airgap-root-timed-");
        let started = Instant::now();
        let out = run(&mut bed.install_cmd(
            &bed.bundle,
            root.path(),
            &no_start_server_args(&cd, bed.port),
        ));
        assert_ok(&out, "a timed clean install");
        run_time = run_time.min(started.elapsed());
    }
    eprintln!("a clean install takes {run_time:?}");

    let mut mid_run = 0;
    let mut delays = Vec::new();
    // Increasing delays from just after the start to past the clean run's
    // time (a loaded machine runs slower); then, since publishing takes only
    // milliseconds, kills the moment a published or generated file appears.
    let mut triggers: Vec<Trigger> = (0..SCHEDULE)
        .map(|point| Trigger::After(0.02 + 1.18 * point as f64 / (SCHEDULE - 1) as f64))
        .collect();
    triggers.extend(PUBLISHED.iter().map(|p| Trigger::WhenExists(p)));
    let total = triggers.len();
    for trigger in triggers {
        let delay = match &trigger {
            Trigger::After(fraction) => format!("{:?}", run_time.mul_f64(*fraction)),
            Trigger::WhenExists(p) => format!("the appearance of {p}"),
        };
        let cd = Containerd::start().expect("a containerd for this kill point");
        let root = tempdir("airgap-root-killed-");
        let args = no_start_server_args(&cd, bed.port);
        let (mut child, log) = bed.spawn_install(root.path(), &args);
        match trigger {
            Trigger::After(fraction) => std::thread::sleep(run_time.mul_f64(fraction)),
            Trigger::WhenExists(rel) => {
                let deadline = Instant::now() + run_time * 3;
                while !root.path().join(rel).exists()
                    && Instant::now() < deadline
                    && child.0.try_wait().unwrap().is_none()
                {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
        if child.0.try_wait().unwrap().is_some() {
            eprintln!("kill at {delay}: the install had already ended; not counted");
            // The machine got faster than when the clean runs were timed
            // (other tests of the binary had loaded it): the run takes at
            // most this long, and the next kill points follow it.
            if let Trigger::After(fraction) = trigger {
                if fraction < 1.0 {
                    run_time = run_time.mul_f64(fraction.max(0.1));
                    eprintln!("  the run time is now taken as {run_time:?}");
                }
            }
            let _ = std::fs::remove_file(&log);
            continue;
        }
        child.0.kill().unwrap(); // SIGKILL
        child.0.wait().unwrap();
        let _ = std::fs::remove_file(&log);
        let leases_at_kill = leases(&cd);
        let partial: Vec<String> = tree(root.path())
            .into_keys()
            .filter(|k| k.ends_with(".partial"))
            .collect();
        eprintln!(
            "kill {} at {delay}: {} blobs, {} images, leases {leases_at_kill:?}, {} staged files, record {}",
            mid_run + 1,
            content(&cd).len(),
            images(&cd).len(),
            partial.len(),
            root.path().join(INSTALL_RECORD).exists(),
        );
        delays.push(delay.clone());

        let out = run(&mut bed.install_cmd(&bed.bundle, root.path(), &args));
        assert_ok(
            &out,
            &format!("the install run again after a kill at {delay}"),
        );
        let what = format!("rerun after a kill at {delay}");
        assert_same_state(&clean, &end_state(root.path(), &cd), &what);
        let left: Vec<String> = tree(root.path())
            .into_keys()
            .filter(|k| k.ends_with(".partial") || k == JOURNAL)
            .collect();
        assert!(left.is_empty(), "{what}: left {left:?}");
        // The rerun deletes the killed run's lease (its process is gone)
        // and leaves none of its own.
        let left = leases(&cd);
        assert!(
            left.is_empty(),
            "{what}: leases {left:?} (at the kill: {leases_at_kill:?})"
        );
        mid_run += 1;
    }
    eprintln!(
        "kill points mid-run: {mid_run} of {total} ({} .. {}); every rerun matched a clean install",
        delays.first().unwrap(),
        delays.last().unwrap()
    );
    assert!(
        mid_run >= KILL_POINTS,
        "only {mid_run} of {total} kills landed mid-run"
    );
}

#[test]
fn two_installs_on_one_root_run_one_after_the_other() {
    let bed = InstallBed::start();
    let args = no_start_server_args(&bed.cd, bed.port);
    let first_log = bed.scratch.path().join("first.log");
    let mut first = KillOnDrop(
        bed.install_cmd(&bed.bundle, bed.root(), &args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&first_log).unwrap())
            .spawn()
            .unwrap(),
    );
    // The first holds the lock once it writes content.
    let deadline = Instant::now() + Duration::from_secs(60);
    while content(&bed.cd).is_empty() {
        assert!(
            first.0.try_wait().unwrap().is_none(),
            "the first install ended before it wrote content:\n{}",
            std::fs::read_to_string(&first_log).unwrap_or_default()
        );
        assert!(Instant::now() < deadline, "no content after 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut second_args = args.clone();
    second_args.insert(0, "--json".into());
    let second = bed
        .install_cmd(&bed.bundle, bed.root(), &second_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let second_done = std::thread::spawn(move || {
        let out = second.wait_with_output().unwrap();
        (out, Instant::now())
    });
    let status = first.0.wait().unwrap();
    let first_end = Instant::now();
    assert!(
        status.success(),
        "the first install failed:\n{}",
        std::fs::read_to_string(&first_log).unwrap_or_default()
    );
    let (out, second_end) = second_done.join().unwrap();
    assert_ok(&out, "the second install");
    assert!(second_end >= first_end);
    let err = stderr(&out);
    assert!(
        err.contains("another airgap install is running") && err.contains("waiting"),
        "the second install did not say it waited:\n{err}"
    );
    // It ran only after the first finished: it found everything in place.
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["changed"], false, "{report:#}");
    assert_eq!(report["files_written"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["images"]["blobs_written"], 0, "{report:#}");
    assert!(leases(&bed.cd).is_empty(), "{:?}", leases(&bed.cd));
    eprintln!("the second install waited: {}", err.trim());
}
