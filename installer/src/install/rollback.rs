//! Rollback protection: a node never goes back to an older bundle by
//! accident. A bundle whose k3s version is older than the installed one,
//! or the same version built earlier, is refused unless the operator says
//! `--allow-downgrade`; the version and build time compared are the ones
//! the signature's trusted comment binds to `bundle.json` (see the reader).

use super::plan::Plan;
use crate::record::InstallRecord;
use anyhow::bail;
use std::cmp::Ordering;

/// `v1.20.6+k3s1` as (1, 20, 6, 1); `None` for a version not in k3s's form.
pub fn parse_k3s_version(v: &str) -> Option<(u64, u64, u64, u64)> {
    let v = v.strip_prefix('v')?;
    let (semver, build) = v.split_once('+').unwrap_or((v, "k3s0"));
    let mut parts = semver.split('.').map(|p| p.parse::<u64>());
    let (major, minor, patch) = (
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.ok()?,
    );
    if parts.next().is_some() {
        return None;
    }
    let build = build.strip_prefix("k3s")?.parse().ok()?;
    Some((major, minor, patch, build))
}

/// Refuses `plan` when it would put an older bundle over `previous`.
pub(super) fn check(
    previous: Option<&InstallRecord>,
    plan: &Plan,
    allow_downgrade: bool,
) -> anyhow::Result<()> {
    let Some(previous) = previous else {
        return Ok(());
    };
    if allow_downgrade || previous.bundle == plan.bundle {
        return Ok(());
    }
    let older = match (
        parse_k3s_version(&plan.k3s_version),
        parse_k3s_version(&previous.k3s_version),
    ) {
        (Some(new), Some(old)) => match new.cmp(&old) {
            Ordering::Less => Some(format!(
                "its k3s {} is older than the installed {}",
                plan.k3s_version, previous.k3s_version
            )),
            Ordering::Equal => previous
                .created
                .filter(|old| plan.created < *old)
                .map(|old| {
                    format!(
                        "it was built at {} (unix time), before the installed bundle of the same k3s {} ({old})",
                        plan.created, plan.k3s_version
                    )
                }),
            Ordering::Greater => None,
        },
        _ => None,
    };
    if let Some(why) = older {
        bail!(
            "refusing to install an older bundle over a newer one: {why}; nothing was changed \
             (pass --allow-downgrade if this is meant)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_k3s_versions() {
        assert_eq!(parse_k3s_version("v1.20.6+k3s1"), Some((1, 20, 6, 1)));
        assert_eq!(parse_k3s_version("v1.21.0+k3s12"), Some((1, 21, 0, 12)));
        assert_eq!(parse_k3s_version("v1.20.6"), Some((1, 20, 6, 0)));
        assert!(parse_k3s_version("v1.20.6+k3s1") < parse_k3s_version("v1.20.6+k3s2"));
        assert!(parse_k3s_version("v1.20.10+k3s1") > parse_k3s_version("v1.20.9+k3s1"));
        for bad in ["1.20.6", "v1.20", "v1.20.6.1", "vx.y.z", "v1.20.6+rke2r1"] {
            assert_eq!(parse_k3s_version(bad), None, "{bad}");
        }
    }
}
