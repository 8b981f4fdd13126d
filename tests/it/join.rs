//! The server check of a join, as the attack: a server that serves the
//! cluster CA's exact bytes (so the token's hash matches) but presents a
//! certificate that CA did not issue, sends a `/cacerts` without end, or
//! redirects `/cacerts` elsewhere. Each join is refused, naming the URL or
//! the limit, with the root and containerd untouched. The hostile server is
//! `airgap_testbed::standin::misbehave` (a TEST DOUBLE of an attacker).

use crate::install::assert_containerd_untouched;
use crate::support;

use airgap_testbed::pki::ClusterCa;
use airgap_testbed::standin::{self, misbehave, misbehave::Cacerts};
use std::time::{Duration, Instant};
use support::install::*;
use support::{assert_fails_naming, assert_ok};

/// The cluster CA the token pins.
fn cluster_ca(bed: &InstallBed, name: &str) -> ClusterCa {
    ClusterCa::create(&bed.scratch.path().join(name), vec!["127.0.0.1".into()]).unwrap()
}

/// `--role agent --no-start` joining `url` with a K10 token for `ca`.
fn agent_args(bed: &InstallBed, url: &str, ca: &ClusterCa) -> Vec<String> {
    let token_file = bed.scratch.path().join("node-token");
    let hash = standin::ca_hash(ca.ca_pem.as_bytes());
    std::fs::write(&token_file, format!("K10{hash}::server:pw\n")).unwrap();
    let mut args = strings(&["--role", "agent", "--init", "none", "--no-start"]);
    args.extend(bed.socket_args());
    args.extend(strings(&["--server", url, "--token-file"]));
    args.push(token_file.display().to_string());
    args
}

/// Joins `url` and checks that the join fails naming `needles` and that
/// nothing was written.
fn assert_join_refused(bed: &InstallBed, url: &str, ca: &ClusterCa, needles: &[&str]) {
    let before = tree(bed.root());
    let out = bed.install(&agent_args(bed, url, ca));
    assert_fails_naming(&out, "a join to a hostile server", needles);
    assert_same_tree(&before, &tree(bed.root()), "a refused join");
    assert_containerd_untouched(&bed.cd, &Default::default(), "a refused join");
}

#[test]
fn a_server_serving_the_right_ca_with_a_certificate_it_did_not_issue_is_refused() {
    let bed = InstallBed::start();
    let ca = cluster_ca(&bed, "cluster");
    // The control: the same server with a certificate from the CA joins.
    let honest = misbehave::start(&ca, ca.ca_pem.clone(), Cacerts::Plain).unwrap();
    assert_ok(
        &bed.install(&agent_args(&bed, &honest, &ca)),
        "a join to a server whose certificate its CA issued",
    );
    // The attack: the CA's public bytes, and a certificate of another CA.
    let bed = InstallBed::start();
    let ca = cluster_ca(&bed, "cluster");
    let other = cluster_ca(&bed, "impostor");
    let impostor = misbehave::start(&other, ca.ca_pem.clone(), Cacerts::Plain).unwrap();
    assert_join_refused(&bed, &impostor, &ca, &[&impostor, "did not issue"]);
}

#[test]
fn a_cacerts_without_end_is_refused_at_64_kib() {
    let bed = InstallBed::start();
    let ca = cluster_ca(&bed, "cluster");
    let url = misbehave::start(&ca, ca.ca_pem.clone(), Cacerts::Huge).unwrap();
    let started = Instant::now();
    assert_join_refused(&bed, &url, &ca, &[&format!("{url}/cacerts"), "64 KiB"]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refusing a 1 GiB /cacerts took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_redirect_from_cacerts_is_not_followed() {
    let bed = InstallBed::start();
    let ca = cluster_ca(&bed, "cluster");
    let url = misbehave::start(&ca, ca.ca_pem.clone(), Cacerts::Redirect).unwrap();
    assert_join_refused(
        &bed,
        &url,
        &ca,
        &[&format!("{url}/cacerts"), "302", "not followed"],
    );
}
