//! Commands on a built bundle: `verify`, `inspect`, `export` (the stick).

use crate::cli::{ExportArgs, InspectArgs, VerifyArgs};
use airgap_bundle::sign::load_public_key;

pub fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let key = load_public_key(&args.key)?;
    airgap_bundle::sign::expect_key_id(&key, &args.key, args.expect_key_id.as_deref())?;
    let verified = airgap_bundle::inspect::verify_file(&args.bundle, key)?;
    super::print_result(&verified, args.json)
}

pub fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let key = args.key.as_deref().map(load_public_key).transpose()?;
    let inspection = airgap_bundle::inspect::inspect_file(&args.bundle, key)?;
    super::print_result(&inspection, args.json)
}

pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let usb =
        airgap_bundler::usb::UsbOptions::from_public_key_file(args.usb, args.split, &args.key)?;
    let stick = airgap_bundler::usb::write_stick(&args.bundle, &usb)?;
    super::print_result(&stick, args.json)
}
