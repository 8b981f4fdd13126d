//! Clusters on test hosts: `airgap install --offline` run on several hosts of
//! one test network (network namespaces with the seed scenario's addresses,
//! 192.168.40.160 and up, and private /etc/rancher, /var/lib/rancher,
//! /usr/local/bin, /run, ...), as on real nodes: no `--root`, `--init none`,
//! each host with its own containerd. k3s is the `k3s-standin` TEST DOUBLE
//! (it serves /cacerts, /ping and its list of registered nodes on 6443); what
//! these tests check is the installer's work around it: tokens carried
//! between hosts, joins that check the server before writing anything, the
//! images in every node's containerd, the manifests only on servers, status.
//!
//! Every test has its own network and hosts, torn down on drop (also on
//! panic), so tests may run in parallel and the file may run twice in a row.

use crate::support;

use airgap_testbed::standin;
use support::assert_fails_naming;
use support::cluster::*;

/// Asserts what `airgap status --json` reports on a node of this bundle.
#[track_caller]
fn assert_status(node: &Node, role: &str) {
    let s = node.status();
    assert_eq!(s["role"], role, "{}: {s:#}", node.name());
    let expected = node.bundle_images().len();
    assert_eq!(s["images_expected"], expected, "{}: {s:#}", node.name());
    assert_eq!(s["images_present"], expected, "{}: {s:#}", node.name());
    assert_eq!(
        s["images_missing"],
        serde_json::json!([]),
        "{}: {s:#}",
        node.name()
    );
    let service = s["service"].as_str().unwrap_or_default();
    assert!(
        service.starts_with("running"),
        "{}: k3s should run: {s:#}",
        node.name()
    );
}

/// Asserts that `node` was installed as `role`: all images, the guestbook
/// manifest only on servers, k3s running, status.
#[track_caller]
fn assert_installed(node: &Node, role: &str) {
    node.assert_all_images();
    assert_eq!(
        node.host.path(GUESTBOOK).is_file(),
        role == "server",
        "{}: the guestbook manifest belongs on servers only",
        node.name()
    );
    assert!(
        !node.k3s_processes().is_empty(),
        "{}: no k3s process: {:?}",
        node.name(),
        node.host.processes()
    );
    assert_status(node, role);
}

#[test]
fn server_and_agent_on_two_hosts() {
    let c = Cluster::new();
    let server = c.node("server", 160);
    let agent = c.node("agent", 161);

    server.install_ok("server", &[]);
    let token = server.token_file();
    let carried = Node::carry(&token, &agent);
    agent.join_ok("agent", &server, &carried, &[]);

    let seen = server.wait_for_members(
        &agent,
        &[member(&agent, "agent"), member(&server, "server")],
    );
    assert_registered_from_their_hosts(&seen, &[&agent]);
    assert_installed(&server, "server");
    assert_installed(&agent, "agent");

    // The agent's join settings are in its env file only (0600), never in
    // config.yaml or on a command line.
    let env_file = agent.host.path("/var/lib/rancher/k3s/airgap/k3s-agent.env");
    let env = std::fs::read_to_string(&env_file).unwrap();
    assert!(
        env.contains(&format!("K3S_URL='{}'", server.url())),
        "{env}"
    );
    assert!(env.contains(server.token().trim()), "{env}");
    assert_eq!(support::install::mode(&env_file), 0o600);
    let config = std::fs::read_to_string(agent.host.path("/etc/rancher/k3s/config.yaml")).unwrap();
    assert!(config.contains("node-name: \"agent\""), "{config}");
    assert!(!config.contains("K10"), "{config}");
    for (_, cmd) in agent.k3s_processes() {
        assert!(
            !cmd.contains("K10"),
            "the token is on a command line: {cmd}"
        );
    }
    assert_machine_untouched();
}

#[test]
fn ha_three_servers_and_an_agent() {
    let c = Cluster::new();
    let first = c.node("server-1", 160);
    let joiners = [c.node("server-2", 161), c.node("server-3", 162)];
    let agent = c.node("agent", 163);

    first.install_ok("server", &["--cluster-init"]);
    let token = first.token_file();
    // The joins run at once, as an operator with three terminals would.
    std::thread::scope(|s| {
        let first = &first;
        for (node, role) in joiners
            .iter()
            .map(|j| (j, "server"))
            .chain([(&agent, "agent")])
        {
            let carried = Node::carry(&token, node);
            s.spawn(move || node.join_ok(role, first, &carried, &[]));
        }
    });

    let seen = first.wait_for_members(
        &agent,
        &[
            member(&agent, "agent"),
            member(&first, "server"),
            member(&joiners[0], "server"),
            member(&joiners[1], "server"),
        ],
    );
    assert_registered_from_their_hosts(&seen, &[&joiners[0], &joiners[1], &agent]);
    let init: Vec<_> = seen
        .iter()
        .filter(|n| n.cluster_init)
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(
        init,
        ["server-1"],
        "only the first server inits the cluster"
    );

    // Every server serves the one cluster CA the token pins.
    let ca = std::fs::read(first.host.path(SERVER_CA)).unwrap();
    let pinned = standin::Token::parse(&first.token()).ca_hash.unwrap();
    assert_eq!(hex(&ca), pinned);
    for server in &joiners {
        assert_eq!(
            std::fs::read(server.host.path(SERVER_CA)).unwrap(),
            ca,
            "{} has another CA",
            server.name()
        );
        assert_installed(server, "server");
    }
    assert_installed(&first, "server");
    assert_installed(&agent, "agent");
    assert_machine_untouched();
}

/// DEPENDS on the lead's check of the cluster-critical flags (`airgap token
/// --out FILE` writing `FILE.cluster.json`, a joining server's install
/// comparing against it before writing anything).
#[test]
fn ha_join_with_another_cluster_cidr_is_refused_before_writing() {
    let c = Cluster::new();
    let first = c.node("server-1", 160);
    let joiner = c.node("server-2", 161);
    first.install_ok("server", &["--cluster-init"]);
    let token = first.token_file();
    let mut cluster_file = token.clone().into_os_string();
    cluster_file.push(".cluster.json");
    assert!(
        std::path::Path::new(&cluster_file).is_file(),
        "airgap token --out should write {} beside the token",
        cluster_file.to_string_lossy()
    );
    let carried = Node::carry(&token, &joiner);
    let url = first.url();
    let carried_arg = carried.display().to_string();

    let out = joiner.install(
        "server",
        &[
            "--server",
            &url,
            "--token-file",
            &carried_arg,
            "--",
            "--cluster-cidr",
            "10.99.0.0/16",
        ],
    );
    assert_fails_naming(
        &out,
        "joining with another --cluster-cidr",
        &["cluster-cidr", "10.99.0.0/16", "10.42.0.0/16"],
    );
    joiner.assert_untouched("a refused HA join");
    assert_eq!(
        members(&first.nodes_seen_from(&joiner)),
        vec![member(&first, "server")]
    );

    // The same join with the cluster's flags then goes through.
    joiner.join_ok(
        "server",
        &first,
        &carried,
        &["--cluster-cidr", "10.42.0.0/16"],
    );
    assert_eq!(
        members(&first.nodes_seen_from(&joiner)),
        vec![member(&first, "server"), member(&joiner, "server")]
    );
}

#[test]
fn failed_joins_leave_the_agent_untouched() {
    let c = Cluster::new();
    let server = c.node("server", 160);
    let agent = c.node("agent", 161);
    let idle = c.bare_node("idle", 162);
    server.install_ok("server", &[]);
    let good = server.token_file();
    let password = standin::Token::parse(&server.token()).password;
    let write_token = |name: &str, text: &str| {
        let path = agent.host.scratch_dir().join(name);
        std::fs::write(&path, format!("{text}\n")).unwrap();
        path.display().to_string()
    };

    // Right K10 format, another CA's hash.
    let wrong_hash = hex(b"not this cluster's CA");
    let wrong = write_token("wrong-ca", &standin::Token::full(&wrong_hash, &password));
    let url = server.url();
    let out = agent.install("agent", &["--server", &url, "--token-file", &wrong]);
    assert_fails_naming(&out, "a token of another CA", &[&url, &wrong_hash, "token"]);
    agent.assert_untouched("a join with another CA's token");

    // A host address where nothing listens.
    let carried = Node::carry(&good, &agent).display().to_string();
    let nowhere = idle.url();
    let out = agent.install("agent", &["--server", &nowhere, "--token-file", &carried]);
    assert_fails_naming(&out, "a server that is not there", &[&nowhere]);
    agent.assert_untouched("a join to an address with nothing listening");

    // Malformed: the CA hash cut short, and no user:password part.
    let short = write_token(
        "short",
        &format!("K10{}::server:{password}", &wrong_hash[..12]),
    );
    let out = agent.install("agent", &["--server", &url, "--token-file", &short]);
    assert_fails_naming(
        &out,
        "a token with a short CA hash",
        &["malformed join token"],
    );
    agent.assert_untouched("a join with a malformed token");
    let no_creds = write_token("no-creds", &format!("K10{wrong_hash}"));
    let out = agent.install("agent", &["--server", &url, "--token-file", &no_creds]);
    assert_fails_naming(
        &out,
        "a token without credentials",
        &["malformed join token"],
    );
    agent.assert_untouched("a join with a token without credentials");

    assert_eq!(
        members(&server.nodes_seen_from(&agent)),
        vec![member(&server, "server")],
        "no failed join may register"
    );
    // Nothing a failed join did stands in the way of the right one.
    agent.join_ok("agent", &server, std::path::Path::new(&carried), &[]);
    server.wait_for_members(
        &agent,
        &[member(&agent, "agent"), member(&server, "server")],
    );
}

/// sha256 hex, as a K10 token pins a CA.
fn hex(bytes: &[u8]) -> String {
    airgap_bundle::digest::Digest::of(bytes).hex()
}

/// FAILS ON A PRODUCT BUG (installer/src/install.rs:265, `parse_token(t)?`
/// without context): a malformed token is refused before anything is
/// written, but the error names neither the server it was meant for nor the
/// token file, where a join error should name the URL.
#[test]
fn malformed_token_error_names_the_server() {
    let c = Cluster::new();
    let agent = c.node("agent", 161);
    let token = agent.host.scratch_dir().join("node-token");
    std::fs::write(&token, "K10abc::server:secret\n").unwrap();
    let url = format!("https://{SUBNET}.160:6443");
    let token = token.display().to_string();
    let out = agent.install("agent", &["--server", &url, "--token-file", &token]);
    agent.assert_untouched("a join with a malformed token");
    assert_fails_naming(&out, "a malformed token", &["malformed join token", &url]);
}
