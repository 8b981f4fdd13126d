//! `airgap keygen`, and where a secret key's password comes from: a file,
//! the environment, or a prompt when a person is at the terminal; never a
//! prompt otherwise.

use crate::cli::{KeygenArgs, PasswordArgs};
use anyhow::{bail, Context as _};
use std::io::IsTerminal as _;

pub fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let password = if args.no_password {
        None
    } else {
        match key_password(&args.password, "the new secret key", true)? {
            Some(pw) => Some(pw),
            None => bail!(
                "no password for the new key: give --password-file FILE, set AIRGAP_KEY_PASSWORD, \
                 or pass --no-password for an unencrypted key"
            ),
        }
    };
    let written = airgap_bundle::keyfile::write_key_pair(&args.out, password, args.force)?;
    eprintln!("{written}");
    Ok(())
}

/// The password for a key, or `None` when none was given and nobody is at
/// a terminal to ask.
pub fn key_password(
    args: &PasswordArgs,
    what: &str,
    confirm: bool,
) -> anyhow::Result<Option<String>> {
    if let Some(file) = &args.password_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading password file {}", file.display()))?;
        let pw = text.lines().next().unwrap_or_default().to_string();
        if pw.is_empty() {
            bail!("password file {} is empty", file.display());
        }
        return Ok(Some(pw));
    }
    if let Ok(pw) = std::env::var("AIRGAP_KEY_PASSWORD") {
        return Ok(Some(pw));
    }
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let pw = rpassword::prompt_password(format!("password for {what}: "))?;
    if confirm && rpassword::prompt_password("again: ")? != pw {
        bail!("the passwords differ");
    }
    Ok(Some(pw))
}
