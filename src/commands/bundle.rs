//! Commands on a built bundle: `verify`, `inspect`, `export` (the stick).

use crate::cli::{ExportArgs, InspectArgs, VerifyArgs};
use airgap_bundle::sign::load_public_key;

pub fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let key = load_public_key(&args.key)?;
    let verified = airgap_bundle::inspect::verify_file(&args.bundle, key)?;
    super::print_result(&verified, args.json)
}

pub fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let key = args.key.as_deref().map(load_public_key).transpose()?;
    let inspection = airgap_bundle::inspect::inspect_file(&args.bundle, key)?;
    super::print_result(&inspection, args.json)
}

pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let public_key = load_public_key(&args.key)?;
    let key_name = args
        .key
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "site.pub".into());
    let stick = airgap_bundler::usb::write_stick(
        &args.bundle,
        &airgap_bundler::usb::UsbOptions {
            dir: args.usb,
            split: args.split,
            public_key,
            key_name,
        },
    )?;
    super::print_result(&stick, args.json)
}
