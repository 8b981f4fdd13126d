//! What the installer reads back from its own files, as the attack: an
//! edited journal, an edited install record and an edited pid file must
//! not make a failed install or an uninstall remove, or signal, anything
//! outside the root: every path read back must resolve inside it (no `..`,
//! no symbolic link on the way), and a pid is signalled only when it runs
//! the root's k3s.

use crate::support;

use airgap_bundle::digest::Digest;
use std::process::Command;
use support::install::*;
use support::{assert_fails_naming, assert_ok};

const JOURNAL: &str = "var/lib/rancher/k3s/airgap/install.journal";

#[test]
fn an_edited_journal_cannot_make_a_failed_install_remove_dirs_outside_the_root() {
    let bed = InstallBed::start();
    let outside = tempdir("airgap-outside-");
    let named = outside.path().join("named");
    let linked = outside.path().join("linked");
    std::fs::create_dir(&named).unwrap();
    std::fs::create_dir(&linked).unwrap();
    // One line names the outside dir itself, one reaches it through a
    // link inside the root.
    std::fs::create_dir_all(bed.path("var/lib/rancher/k3s/airgap")).unwrap();
    std::os::unix::fs::symlink(outside.path(), bed.path("var/out")).unwrap();
    std::fs::write(
        bed.path(JOURNAL),
        format!(
            "{}\n{}\n",
            named.display(),
            bed.path("var/out/linked").display()
        ),
    )
    .unwrap();
    // An install that fails after it took over the journal.
    let missing = bed.scratch.path().join("no-containerd.sock");
    let mut args = strings(&["--role", "server", "--init", "none", "--containerd-socket"]);
    args.push(missing.display().to_string());
    args.extend(port_args(bed.port));
    let out = bed.install(&args);
    assert_fails_naming(&out, "install with no containerd", &["no-containerd.sock"]);
    assert!(
        named.is_dir(),
        "the failed install removed {}",
        named.display()
    );
    assert!(
        linked.is_dir(),
        "the failed install removed {}",
        linked.display()
    );
}

#[test]
fn an_edited_record_cannot_make_uninstall_remove_files_outside_the_root() {
    let bed = InstallBed::start();
    assert_ok(
        &bed.install(&no_start_embedded_args(bed.port)),
        "airgap install --no-start",
    );
    let outside = tempdir("airgap-outside-");
    let victim = outside.path().join("victim.txt");
    std::fs::write(&victim, "precious\n").unwrap();
    std::fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::create_dir(outside.path().join("empty")).unwrap();
    std::os::unix::fs::symlink(outside.path(), bed.path("etc/evil")).unwrap();
    // The record names the outside file (with its very hash, so it looks
    // unchanged) and dir through the link.
    let record = bed.path(INSTALL_RECORD);
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    v["files"].as_array_mut().unwrap().push(serde_json::json!({
        "path": "/etc/evil/victim.txt",
        "sha256": Digest::of(b"precious\n"),
        "mode": 0o644,
    }));
    v["dirs"]
        .as_array_mut()
        .unwrap()
        .push("/etc/evil/empty".into());
    std::fs::write(&record, serde_json::to_vec_pretty(&v).unwrap()).unwrap();

    let out = bed.uninstall(&[]);
    assert_fails_naming(
        &out,
        "uninstall of an edited record",
        &["/etc/evil/victim.txt"],
    );
    assert!(victim.is_file(), "uninstall removed {}", victim.display());
    assert!(
        outside.path().join("empty").is_dir(),
        "uninstall removed a dir outside the root"
    );
    assert!(record.is_file(), "a refused uninstall removed the record");
}

#[test]
fn uninstall_does_not_signal_a_pid_file_naming_another_process() {
    let bed = InstallBed::start();
    assert_ok(
        &bed.install(&no_start_embedded_args(bed.port)),
        "airgap install --no-start",
    );
    let sleep = KillOnDrop(Command::new("sleep").arg("300").spawn().unwrap());
    let pid = sleep.0.id();
    let pid_file = bed.path("run/k3s-airgap/k3s.pid");
    std::fs::create_dir_all(pid_file.parent().unwrap()).unwrap();
    std::fs::write(&pid_file, format!("{pid}\n")).unwrap();
    let out = bed.uninstall(&[]);
    assert_ok(&out, "airgap uninstall");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        process_alive(pid),
        "uninstall signalled pid {pid}, a sleep that is not k3s"
    );
}
