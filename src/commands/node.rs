//! The node's own state: `token`, `status`, `uninstall`.

use crate::cli::{StatusArgs, TokenArgs, UninstallArgs};
use airgap_installer::root::HostRoot;
use tokio::runtime::Handle;

pub fn token(args: TokenArgs) -> anyhow::Result<()> {
    let root = HostRoot::new(&args.root)?;
    let token = airgap_installer::join::server_token(&root)?;
    match &args.out {
        Some(out) => {
            let export = airgap_installer::join::export_token(&root, &token, out, &args.server)?;
            eprintln!("{export}");
        }
        None => {
            println!("{token}");
            eprintln!("{}", airgap_installer::join::printed_token(&args.server));
        }
    }
    Ok(())
}

pub fn status(args: StatusArgs, handle: &Handle) -> anyhow::Result<()> {
    let status = airgap_installer::status::status(&args.root, handle)?;
    super::print_result(&status, args.json)
}

pub fn uninstall(args: UninstallArgs, handle: &Handle) -> anyhow::Result<()> {
    let opts = airgap_installer::uninstall::UninstallOptions {
        root: args.root,
        purge_images: args.purge_images,
        purge_data: args.purge_data,
    };
    let report =
        airgap_installer::uninstall::uninstall(&opts, &airgap_installer::run::HostRunner, handle)?;
    super::print_result(&report, args.json)
}
