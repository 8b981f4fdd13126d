//! Join tokens stay secret: an agent joining with a token file, run with
//! `-vv` and `--json`, and a join that fails, never show the token (or its
//! password) in airgap's stderr or stdout, in the started k3s's log or
//! command line (/proc/<pid>/cmdline), or in any file under the root but
//! the ones meant to hold it, which are 0600. k3s is the `k3s-standin` TEST
//! DOUBLE.

use crate::support;

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;
use support::install::*;
use support::{assert_ok, run, stderr, stdout};

/// Files k3s itself keeps its tokens in (the stand-in, as k3s does).
fn k3s_owned(path: &str) -> bool {
    path.starts_with("var/lib/rancher/k3s/server/")
        || path.starts_with("var/lib/rancher/k3s/agent/")
}

#[test]
fn join_tokens_never_reach_logs_output_errors_or_command_lines() {
    let bed = InstallBed::start();
    let server = StandinServer::start(bed.scratch.path(), bed.port);
    let token = server.token.clone();
    let password = token.rsplit(':').next().unwrap().to_string();
    assert!(password.len() >= 8, "{token}");
    let token_file = bed.scratch.path().join("node-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let mut args = strings(&[
        "-vv", "--json", "--role", "agent", "--init", "none", "--wait", "60",
    ]);
    args.extend(bed.socket_args());
    args.extend(strings(&["--server", &server.url, "--token-file"]));
    args.push(token_file.display().to_string());
    let out = bed.install(&args);
    let (out_text, err_text) = (stdout(&out), stderr(&out));
    assert_ok(&out, "an agent install with -vv --json");
    assert!(
        err_text.lines().count() > 5,
        "-vv logged little:\n{err_text}"
    );
    for (what, text) in [("stdout (--json)", &out_text), ("stderr (-vv)", &err_text)] {
        assert!(!text.contains(&password), "{what} holds the token:\n{text}");
    }
    serde_json::from_str::<serde_json::Value>(&out_text).expect("--json printed JSON");

    // The started agent: its command line and its log.
    let pid = bed
        .pid("k3s-agent")
        .expect("the agent was started detached");
    assert!(
        eventually(Duration::from_secs(10), || process_alive(pid)),
        "the agent is not running"
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("agent"), "{cmdline}");
    assert!(
        !cmdline.contains(&password),
        "the token is on k3s's command line: {cmdline}"
    );

    // Every file under the root: the token only in 0600 files, and only in
    // the env file airgap writes or k3s's own data; never in a log.
    let mut holders = Vec::new();
    for (path, node) in tree(bed.root()) {
        let Node::File { mode, .. } = node else {
            continue;
        };
        let text =
            String::from_utf8_lossy(&std::fs::read(bed.root().join(&path)).unwrap()).into_owned();
        if !text.contains(&password) {
            continue;
        }
        assert!(!path.ends_with(".log"), "{path} (a log) holds the token");
        assert!(
            path.ends_with(".env") || k3s_owned(&path),
            "{path} holds the token"
        );
        assert_eq!(mode & 0o077, 0, "{path} holds the token and is {mode:o}");
        holders.push(path);
    }
    assert!(
        holders.iter().any(|p| p.ends_with(".env")),
        "no env file holds the token: {holders:?}"
    );
    let logs: Vec<String> = tree(bed.root())
        .into_keys()
        .filter(|p| p.ends_with(".log"))
        .collect();
    assert!(!logs.is_empty(), "the agent wrote no log");
    eprintln!("token held by {holders:?}; not in {logs:?}, stdout, stderr or {cmdline}");

    // Failing joins: a token for another CA, and a mangled one.
    let other_root = tempdir("airgap-root-secrets-");
    let wrong_ca = format!("K10{}::server:{password}", "ab".repeat(32));
    let mangled = format!("K10zz::{password}");
    for (what, bad) in [("another CA", wrong_ca), ("a mangled token", mangled)] {
        let file = bed.scratch.path().join("bad-token");
        std::fs::write(&file, format!("{bad}\n")).unwrap();
        let mut args = strings(&["-vv", "--json", "--role", "agent", "--init", "none"]);
        args.extend(bed.socket_args());
        args.extend(strings(&["--server", &server.url, "--token-file"]));
        args.push(file.display().to_string());
        let out = run(&mut bed.install_cmd(&bed.bundle, other_root.path(), &args));
        assert!(!out.status.success(), "a join with {what} succeeded");
        for text in [stdout(&out), stderr(&out)] {
            assert!(
                !text.contains(&password),
                "a join with {what} shows the token:\n{text}"
            );
        }
        eprintln!(
            "a join with {what}: {}",
            stderr(&out).trim().lines().last().unwrap_or("")
        );
    }
}
