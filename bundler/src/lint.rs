//! Offline-readiness lint of the auto-deploy manifests: what would make a
//! node try to reach a registry on site. Runs before anything is downloaded
//! (`bundle build`) and alone as `airgap bundle lint` (no network at all).
//!
//! Rules: an image that is not in `images.lock` (the bundle would not carry
//! it pinned); a floating image (`:latest` or untagged) whose
//! `imagePullPolicy` is not `IfNotPresent` or `Never` (Kubernetes defaults
//! those to `Always`); any `imagePullPolicy: Always`; an invalid reference.
//! Each finding names the file, line, document, workload and container.

use crate::imageset::ManifestImage;
use airgap_bundle::images_lock::{ImagesLock, LOCK_NAME, LOCK_VERSION};
use airgap_bundle::reference::ImageRef;
use anyhow::Context as _;
use serde::Serialize;
use std::fmt;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One problem in one container.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// `not-in-lock`, `latest`, `pull-always`, `pull-policy`, `invalid-image`.
    pub rule: &'static str,
    pub file: String,
    pub line: usize,
    pub document: usize,
    pub kind: String,
    pub workload: String,
    pub container: String,
    pub image: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} (document {}, {} {}, container {}): {}",
            self.file,
            self.line,
            self.document,
            self.kind,
            self.workload,
            self.container,
            self.message
        )
    }
}

/// How strict the lint is.
#[derive(Debug, Clone, Copy)]
pub struct LintOptions {
    /// Floating images without `IfNotPresent` are warnings, not errors.
    pub allow_latest: bool,
    /// How an image missing from the lock counts; `None` skips the rule
    /// (`bundle build --locked` reports it with the rest of the lock's
    /// differences).
    pub not_in_lock: Option<Severity>,
}

impl Default for LintOptions {
    fn default() -> Self {
        Self {
            allow_latest: false,
            not_in_lock: Some(Severity::Error),
        }
    }
}

/// Every finding, errors and warnings counted.
#[derive(Debug, Clone, Serialize)]
pub struct LintReport {
    /// Container images checked.
    pub images: usize,
    pub errors: usize,
    pub warnings: usize,
    pub findings: Vec<Finding>,
}

impl LintReport {
    /// The findings of one severity.
    pub fn of(&self, severity: Severity) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.severity == severity)
    }

    /// Fails naming every error.
    pub fn check(&self) -> Result<(), LintFailed> {
        if self.errors == 0 {
            return Ok(());
        }
        Err(LintFailed(
            self.of(Severity::Error).map(ToString::to_string).collect(),
        ))
    }
}

impl fmt::Display for LintReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            writeln!(f, "{}: {finding}", finding.severity.as_str())?;
        }
        write!(
            f,
            "{} container image(s) checked: {} error(s), {} warning(s)",
            self.images, self.errors, self.warnings
        )
    }
}

/// The manifests would make a node pull on site.
#[derive(Debug, thiserror::Error)]
#[error(
    "the manifests are not ready for an offline site, {} error(s):\n  {}",
    .0.len(),
    .0.join("\n  ")
)]
pub struct LintFailed(pub Vec<String>);

/// Checks every container image against the lock and the pull-policy rules.
pub fn lint(images: &[ManifestImage], lock: &ImagesLock, opts: &LintOptions) -> LintReport {
    let mut findings = Vec::new();
    for found in images {
        let mut add = |severity, rule, message: String| {
            findings.push(Finding {
                severity,
                rule,
                file: found.file.display().to_string(),
                line: found.line,
                document: found.document,
                kind: found.kind.clone(),
                workload: found.workload.clone(),
                container: found.container.clone(),
                image: found.image.clone(),
                message,
            })
        };
        let raw = &found.image;
        let reference: ImageRef = match raw.parse() {
            Ok(r) => r,
            Err(e) => {
                add(
                    Severity::Error,
                    "invalid-image",
                    format!("image {raw:?} is not a valid image reference: {e}"),
                );
                continue;
            }
        };
        match found.pull_policy.as_deref() {
            Some("IfNotPresent") | Some("Never") => {}
            Some("Always") => add(
                Severity::Error,
                "pull-always",
                format!(
                    "image {raw} has imagePullPolicy: Always, so the kubelet would try to pull it on site"
                ),
            ),
            Some(other) => add(
                Severity::Error,
                "pull-policy",
                format!(
                    "image {raw} has imagePullPolicy: {other}, which is none of Always, IfNotPresent, Never"
                ),
            ),
            None if reference.is_floating() => {
                // A registry port (`localhost:5000/app`) is not a tag.
                let tagged = raw.rsplit('/').next().is_some_and(|n| n.contains(':'));
                let untagged = if tagged {
                    ""
                } else {
                    " (no tag means :latest)"
                };
                let severity = if opts.allow_latest {
                    Severity::Warning
                } else {
                    Severity::Error
                };
                add(
                    severity,
                    "latest",
                    format!(
                        "image {raw}{untagged} has no imagePullPolicy: IfNotPresent, so the kubelet would try to pull it on site"
                    ),
                );
            }
            None => {}
        }
        if let Some(severity) = opts.not_in_lock {
            if reference.digest.is_none() && lock.get(&reference).is_none() {
                add(
                    severity,
                    "not-in-lock",
                    format!(
                        "image {raw} ({reference}) is not in {LOCK_NAME}; `airgap bundle lock` pins it"
                    ),
                );
            }
        }
    }
    let count = |s| {
        findings
            .iter()
            .filter(|f: &&Finding| f.severity == s)
            .count()
    };
    LintReport {
        images: images.len(),
        errors: count(Severity::Error),
        warnings: count(Severity::Warning),
        findings,
    }
}

/// `airgap bundle lint`: reads the manifests and the lock (a missing lock
/// is an empty one) and lints; no network.
pub fn lint_files(
    manifests_dir: &Path,
    lock_path: &Path,
    opts: &LintOptions,
) -> anyhow::Result<LintReport> {
    let lock = match std::fs::read_to_string(lock_path) {
        Ok(text) => {
            ImagesLock::parse(&text).with_context(|| format!("in {}", lock_path.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ImagesLock {
            version: LOCK_VERSION,
            ..ImagesLock::default()
        },
        Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", lock_path.display())),
    };
    let (files, _) =
        crate::imageset::manifest_files(manifests_dir, crate::imageset::Symlinks::Refuse)?;
    let images = crate::imageset::scan_manifests(&files)?;
    Ok(lint(&images, &lock, opts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imageset::scan_manifests;

    const APP: &str = "apiVersion: v1
kind: Service
metadata: {name: web}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  template:
    spec:
      containers:
        - name: nginx
          image: nginx:latest
        - name: pinned
          image: nginx:1.25
        - name: bare
          image: busybox
          imagePullPolicy: IfNotPresent
        - name: always
          image: nginx:1.25
          imagePullPolicy: Always
";

    #[test]
    fn reports_floating_images_and_missing_pins_with_places() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.yaml");
        std::fs::write(&file, APP).unwrap();
        let images = scan_manifests(&[file]).unwrap();
        let lock = ImagesLock::parse(
            r#"{"version":1,"images":[{"reference":"nginx:latest"},{"reference":"nginx:1.25"}]}"#,
        )
        .unwrap();
        let report = lint(&images, &lock, &LintOptions::default());
        let text: Vec<String> = report.findings.iter().map(ToString::to_string).collect();
        assert_eq!(report.errors, 3, "{text:#?}");
        assert!(
            text[0].ends_with("app.yaml:14 (document 2, Deployment web, container nginx): image nginx:latest has no imagePullPolicy: IfNotPresent, so the kubelet would try to pull it on site"),
            "{}",
            text[0]
        );
        assert_eq!(report.findings[1].rule, "not-in-lock");
        assert_eq!(report.findings[1].container, "bare");
        assert_eq!(report.findings[2].rule, "pull-always");

        let relaxed = LintOptions {
            allow_latest: true,
            not_in_lock: None,
        };
        let report = lint(&images, &lock, &relaxed);
        assert_eq!((report.errors, report.warnings), (1, 1), "{report}");
        assert!(report.check().is_err());
    }

    #[test]
    fn untagged_images_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(
            &file,
            "kind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - {name: c, image: \"localhost:5000/app\"}\n",
        )
        .unwrap();
        let images = scan_manifests(&[file]).unwrap();
        let report = lint(&images, &ImagesLock::default(), &LintOptions::default());
        assert!(
            report.findings[0]
                .message
                .contains("(no tag means :latest)"),
            "{report}"
        );
        assert_eq!(report.findings[1].rule, "not-in-lock");
    }
}
