//! The test hosts themselves: addresses, private paths, reachability,
//! containerd, and that teardown leaves nothing behind.

use super::*;
use std::time::Instant;

fn netns_exists(name: &str) -> bool {
    Path::new(procs::NETNS_DIR).join(name).exists()
}

#[test]
fn parses_addresses() {
    assert_eq!(
        parse_address("192.168.40.160").unwrap(),
        (Ipv4Addr::new(192, 168, 40, 160), 24)
    );
    assert_eq!(
        parse_address("10.0.0.1/16").unwrap(),
        (Ipv4Addr::new(10, 0, 0, 1), 16)
    );
    assert!(parse_address("10.0.0.1/33").is_err());
    assert!(parse_address("host").is_err());
    assert_eq!(backing_name("/etc/systemd/system"), "etc-systemd-system");
    assert_eq!(sh_quote("a'b"), r"'a'\''b'");
}

#[test]
fn hosts_have_private_paths_and_share_a_subnet() {
    let net = TestNetwork::create().unwrap();
    let a = net.host("alpha", "192.168.40.160").unwrap();
    let b = net.host("beta", "192.168.40.161/24").unwrap();
    assert!(
        net.host("gamma", "192.168.40.161").is_err(),
        "duplicate address"
    );
    let (a_ns, a_dir, switch) = (
        a.netns().to_string(),
        a.dir().to_path_buf(),
        net.switch_netns().to_string(),
    );

    // Each host writes its own /etc/rancher and /var/lib/rancher; the
    // machine's stay absent, the rest of /etc is read-only.
    for h in [&a, &b] {
        let script = format!(
            "mkdir -p /etc/rancher/k3s /var/lib/rancher/k3s && echo {} >/etc/rancher/k3s/who && echo x >/run/x && touch /usr/local/bin/k3s",
            h.name()
        );
        h.run_ok("sh", ["-c", &script]).unwrap();
        let out = h.run("sh", ["-c", "touch /etc/airgap-host-test"]).unwrap();
        assert!(!out.status.success(), "/etc should be read-only in a host");
    }
    assert!(!Path::new("/etc/airgap-host-test").exists());
    assert!(!Path::new("/etc/rancher").exists());
    assert!(!Path::new("/var/lib/rancher").exists());
    assert!(!Path::new("/usr/local/bin/k3s").exists());
    assert_eq!(
        std::fs::read_to_string(a.path("/etc/rancher/k3s/who")).unwrap(),
        "alpha\n"
    );
    assert_eq!(b.run_ok("cat", ["/etc/rancher/k3s/who"]).unwrap(), "beta\n");
    assert_eq!(a.path("/etc/passwd"), Path::new("/etc/passwd"));
    assert_eq!(a.path("/run"), a.dir().join("fs/run"));
    assert_eq!(
        a.private_entries(),
        [
            "/etc/rancher/k3s",
            "/etc/rancher/k3s/who",
            "/run/x",
            "/usr/local/bin/k3s",
            "/var/lib/rancher/k3s"
        ]
    );

    // Addresses: each host has its own, and they reach each other.
    let out = a
        .run_ok("ip", ["-4", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(out.contains("192.168.40.160/24"), "{out}");
    let mut listener = b
        .spawn("busybox", ["nc", "-l", "-p", "7000", "-e", "echo", "hello"])
        .unwrap();
    let mut reply = String::new();
    for _ in 0..50 {
        let out = a
            .run("busybox", ["nc", "-w", "2", "192.168.40.161", "7000"])
            .unwrap();
        reply = String::from_utf8_lossy(&out.stdout).into_owned();
        if reply.contains("hello") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(reply.contains("hello"), "{reply:?}");
    let _ = listener.wait();

    // A long-running process is found by its namespace and killed on drop.
    let mut sleeper = a.spawn("sleep", ["600"]).unwrap();
    let pid = sleeper.id();
    // `ip netns exec` enters the namespace a moment after the spawn.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !a.processes().iter().any(|(p, _)| *p == pid) {
        assert!(Instant::now() < deadline, "{pid} never entered host alpha");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!b.processes().iter().any(|(p, _)| *p == pid));
    drop(a);
    let _ = sleeper.wait();
    assert!(!process_alive(pid));
    assert!(!netns_exists(&a_ns));
    assert!(!a_dir.exists(), "{} left behind", a_dir.display());
    drop(b);
    assert!(netns_exists(&switch), "the network still holds the switch");
    drop(net);
    assert!(!netns_exists(&switch));
}

#[test]
fn containerd_in_a_host() {
    let host = TestHost::create("cd", "192.168.40.170").unwrap();
    host.start_containerd().unwrap();
    assert!(host.path(CONTAINERD_SOCKET).exists());
    let out = host.ctr_ok(&["version"]).unwrap();
    assert!(out.contains("Server:"), "{out}");
    let plugins = host.ctr_ok(&["plugins", "ls"]).unwrap();
    assert!(!plugins.contains("io.containerd.grpc.v1.cri"), "{plugins}");
    assert!(host.images().unwrap().is_empty());
    assert!(
        host.private_entries().is_empty(),
        "{:?}",
        host.private_entries()
    );
    let pids: Vec<u32> = host.processes().iter().map(|(p, _)| *p).collect();
    assert!(!pids.is_empty());
    let dir = host.dir().to_path_buf();
    drop(host);
    assert!(pids.iter().all(|p| !process_alive(*p)), "{pids:?}");
    assert!(!dir.exists());
}
