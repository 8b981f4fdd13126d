//! `airgap install`: the arguments as install options, the report printed.

use crate::cli::{InitArg, InstallArgs, RoleArg, RuntimeArg};
use airgap_installer::install::{InstallOptions, JoinToken, Runtime, Verification};
use airgap_installer::layout::Role;
use airgap_installer::service::Init;
use airgap_installer::source::BundleSource;
use tokio::runtime::Handle;

pub fn install(args: InstallArgs, handle: &Handle) -> anyhow::Result<()> {
    let json = args.json;
    if args.token.is_some() && std::env::var_os("K3S_TOKEN").is_none() {
        tracing::warn!(
            "--token is visible to every user in the process list; prefer --token-file FILE or K3S_TOKEN"
        );
    }
    let report = airgap_installer::install::install(
        &options(args),
        &airgap_installer::run::HostRunner,
        handle,
    )?;
    super::print_result(&report, json)?;
    if let (Some(cmd), false) = (&report.join_command, json) {
        eprintln!("\nto join agents, carry the token file and run on each:\n  {cmd}");
    }
    Ok(())
}

fn options(args: InstallArgs) -> InstallOptions {
    // As install.sh: a server URL means an agent unless told otherwise.
    let role = match (args.role, &args.server) {
        (Some(RoleArg::Server), _) | (None, None) => Role::Server,
        (Some(RoleArg::Agent), _) | (None, Some(_)) => Role::Agent,
    };
    InstallOptions {
        bundle: BundleSource::from_arg(&args.bundle),
        verification: match args.key {
            Some(path) => Verification::Key {
                path,
                expect_id: args.expect_key_id,
            },
            None => Verification::InsecureSkipSignature,
        },
        role,
        server: args.server,
        token: match (args.token, args.token_file) {
            (Some(t), _) => JoinToken::Inline(t),
            (None, Some(f)) => JoinToken::File(f),
            (None, None) => JoinToken::None,
        },
        cluster_init: args.cluster_init,
        node_name: args.node_name,
        runtime: match args.runtime {
            RuntimeArg::External => Runtime::External,
            RuntimeArg::Embedded => Runtime::Embedded,
        },
        containerd_socket: args.containerd_socket,
        snapshotter: args.snapshotter,
        root: args.root,
        init: args.init.map(|i| match i {
            InitArg::Systemd => Init::Systemd,
            InitArg::Openrc => Init::Openrc,
            InitArg::None => Init::None,
        }),
        skip_preflight: args.skip_preflight,
        no_start: args.no_start,
        dry_run: args.dry_run,
        allow_downgrade: args.allow_downgrade,
        wait: std::time::Duration::from_secs(args.wait),
        extra_args: args.k3s_args,
    }
}
