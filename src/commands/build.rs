//! The connected side's commands: `bundle build`, `bundle lock`, `bundle lint`.

use super::keygen::key_password;
use crate::cli::{BuildArgs, CompressArg, LintArgs, LockArgs, RegistryArgs};
use airgap_bundle::write::Compression;
use airgap_bundler::build::BuildOptions;
use airgap_bundler::registry::RegistryConfig;
use airgap_bundler::release::ReleaseSource;
use anyhow::bail;
use tokio::runtime::Handle;

pub fn build(args: BuildArgs, handle: &Handle) -> anyhow::Result<()> {
    let key_password = key_password(&args.password, &args.sign_key.display().to_string(), false)?;
    let usb = match &args.usb {
        // The stick's key comes from the signing key, checked before the build.
        Some(dir) => Some(airgap_bundler::usb::UsbOptions::from_secret_key_file(
            dir.clone(),
            args.split,
            &args.sign_key,
            key_password.clone(),
        )?),
        None => None,
    };
    let opts = BuildOptions {
        version: args.version.clone(),
        arches: arches(&args.arch),
        output: args.output.clone(),
        split: args.split,
        sign_key: args.sign_key.clone(),
        key_password,
        release: ReleaseSource {
            base_url: args.release_url.clone(),
            install_sh_url: args.install_sh_url.clone(),
            layout: args.release_layout.into(),
        },
        registry: registry_config(&args.registry, args.jobs)?,
        cache: airgap_bundler::cache::choose(args.cache.clone(), args.no_cache)?,
        compression: match args.compress {
            CompressArg::None => Compression::None,
            CompressArg::Zstd => Compression::zstd(args.compress_level),
        },
        jobs: args.jobs as usize,
        manifests_dir: args.manifests.clone(),
        lock_path: args.lock.clone(),
        source_date_epoch: airgap_bundler::build::source_date_epoch_from_env()?,
        rebuild: args.rebuild,
    };
    let checks = airgap_bundler::pins::BuildChecks {
        locked: args.locked,
        allow_latest: args.allow_latest,
        follow_symlinks: args.follow_symlinks,
    };
    let progress = airgap_bundler::progress::progress_for(args.quiet || args.json);
    let summary = airgap_bundler::build::build(&opts, &checks, progress.as_ref(), handle)?;
    let stick = match &usb {
        Some(usb) => Some(airgap_bundler::usb::write_stick(&summary.file, usb)?),
        None => None,
    };
    if args.json {
        let json = match &stick {
            Some(stick) => serde_json::json!({ "bundle": summary, "usb": stick }),
            None => serde_json::to_value(&summary)?,
        };
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else if !args.quiet {
        if let Some(stick) = &stick {
            println!("{stick}");
        }
        println!("{summary}");
    }
    Ok(())
}

pub fn lock(args: LockArgs, handle: &Handle) -> anyhow::Result<()> {
    let opts = airgap_bundler::pins::LockOptions {
        version: args.version,
        arches: arches(&args.arch),
        release: ReleaseSource {
            base_url: args.release_url,
            install_sh_url: None,
            layout: args.release_layout.into(),
        },
        registry: registry_config(&args.registry, args.jobs)?,
        manifests_dir: args.manifests,
        lock_path: args.lock,
        check: args.check,
        jobs: args.jobs as usize,
    };
    let report = airgap_bundler::pins::lock(&opts, handle)?;
    super::print_result(&report, args.json)?;
    if report.check && !report.changes.is_empty() {
        bail!(
            "{} does not match the registries: {} difference(s); run `airgap bundle lock` to update it",
            report.lock.display(),
            report.changes.len()
        );
    }
    Ok(())
}

pub fn lint(args: LintArgs) -> anyhow::Result<()> {
    let opts = airgap_bundler::lint::LintOptions {
        allow_latest: args.allow_latest,
        ..Default::default()
    };
    let report = airgap_bundler::lint::lint_files(&args.manifests, &args.lock, &opts)?;
    super::print_result(&report, args.json)?;
    if report.errors > 0 {
        bail!(
            "{} offline-readiness error(s) in {}",
            report.errors,
            args.manifests.display()
        );
    }
    Ok(())
}

/// `--arch`, or this host's.
fn arches(given: &[String]) -> Vec<String> {
    if given.is_empty() {
        vec![airgap_bundle::oci::host_arch().to_string()]
    } else {
        given.to_vec()
    }
}

/// The registry client's settings, with `jobs` parallel pulls.
fn registry_config(args: &RegistryArgs, jobs: u16) -> anyhow::Result<RegistryConfig> {
    Ok(RegistryConfig {
        mirrors: args
            .registry_mirror
            .iter()
            .map(|m| airgap_bundler::registry::parse_mirror(m))
            .collect::<anyhow::Result<Vec<_>>>()?,
        insecure: args.insecure_registry.clone(),
        jobs: jobs as usize,
        credentials: airgap_bundler::auth::Credentials::load(
            &args.registry_auth,
            airgap_bundler::auth::docker_config_dir().as_deref(),
        )?,
        ca_files: args.registry_ca.clone(),
        read_timeout: std::time::Duration::from_secs(args.registry_timeout),
    })
}
