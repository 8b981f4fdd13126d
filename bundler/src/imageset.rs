//! The set of images a bundle must carry: the images the auto-deploy
//! manifests run (every container and init container of every workload), the
//! pause/sandbox image (k3s's, and any entry `images.lock` marks `"sandbox":
//! true`) and the k3s system images of the chosen version (its
//! `k3s-images.txt`). Other lock entries are not wanted: the lock follows this
//! set, as Cargo.lock follows Cargo.toml.
//!
//! Manifests are parsed into a small tree that keeps line numbers, so that a
//! finding names the file, the document, the container and the line.

use airgap_bundle::images_lock::ImagesLock;
use airgap_bundle::reference::ImageRef;
use anyhow::Context as _;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A YAML node with the line it starts on (1-based).
#[derive(Debug, Clone)]
pub enum Node {
    Scalar(String, usize),
    Seq(Vec<Node>, usize),
    Map(Vec<(String, Node)>, usize),
    Null(usize),
}

impl Node {
    pub fn line(&self) -> usize {
        match self {
            Node::Scalar(_, l) | Node::Seq(_, l) | Node::Map(_, l) | Node::Null(l) => *l,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(entries, _) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn path(&self, keys: &[&str]) -> Option<&Node> {
        keys.iter().try_fold(self, |node, key| node.get(key))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Scalar(s, _) => Some(s),
            _ => None,
        }
    }

    pub fn items(&self) -> &[Node] {
        match self {
            Node::Seq(items, _) => items,
            _ => &[],
        }
    }
}

/// Builds [`Node`] trees from the parser's events. Aliases become nulls:
/// Kubernetes manifests do not use them for images.
#[derive(Default)]
struct TreeBuilder {
    docs: Vec<Node>,
    stack: Vec<(Node, Option<String>)>,
}

impl TreeBuilder {
    fn push_value(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some((Node::Seq(items, _), _)) => items.push(node),
            Some((Node::Map(entries, _), pending_key)) => match pending_key.take() {
                None => {
                    let key = match node {
                        Node::Scalar(s, _) => s,
                        _ => String::new(),
                    };
                    *pending_key = Some(key);
                }
                Some(key) => entries.push((key, node)),
            },
            Some(_) => {}
        }
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line() + if mark.line() == 0 { 1 } else { 0 };
        match ev {
            Event::Scalar(value, style, _, _) => {
                let plain_null = matches!(style, yaml_rust2::scanner::TScalarStyle::Plain)
                    && matches!(value.as_str(), "~" | "null" | "");
                self.push_value(if plain_null {
                    Node::Null(line)
                } else {
                    Node::Scalar(value, line)
                });
            }
            Event::Alias(_) => self.push_value(Node::Null(line)),
            Event::SequenceStart(..) => self.stack.push((Node::Seq(Vec::new(), line), None)),
            Event::MappingStart(..) => self.stack.push((Node::Map(Vec::new(), line), None)),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, _)) = self.stack.pop() {
                    self.push_value(node);
                }
            }
            _ => {}
        }
    }
}

/// Parses a (multi-document) YAML text into trees with line numbers.
pub fn parse_yaml(text: &str) -> Result<Vec<Node>, yaml_rust2::ScanError> {
    let mut builder = TreeBuilder::default();
    Parser::new_from_str(text).load(&mut builder, true)?;
    Ok(builder.docs)
}

/// One container image reference found in a manifest.
#[derive(Debug, Clone)]
pub struct ManifestImage {
    pub file: PathBuf,
    /// 1-based index of the YAML document in the file.
    pub document: usize,
    pub kind: String,
    pub workload: String,
    pub container: String,
    pub image: String,
    pub pull_policy: Option<String>,
    pub line: usize,
}

/// Where the pod spec sits in each workload kind.
fn pod_spec_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &["spec"],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => &["spec", "template", "spec"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template", "spec"],
        _ => return None,
    })
}

/// Every container image in one manifest document tree (a `List` is walked).
fn images_in_doc(doc: &Node, file: &Path, document: usize, out: &mut Vec<ManifestImage>) {
    let kind = doc.get("kind").and_then(Node::as_str).unwrap_or_default();
    if kind == "List" {
        for item in doc.get("items").map(Node::items).unwrap_or_default() {
            images_in_doc(item, file, document, out);
        }
        return;
    }
    let Some(spec_path) = pod_spec_path(kind) else {
        return;
    };
    let Some(spec) = doc.path(spec_path) else {
        return;
    };
    let workload = doc
        .path(&["metadata", "name"])
        .and_then(Node::as_str)
        .unwrap_or("<unnamed>");
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for container in spec.get(list).map(Node::items).unwrap_or_default() {
            let Some(image_node) = container.get("image") else {
                continue;
            };
            out.push(ManifestImage {
                file: file.to_path_buf(),
                document,
                kind: kind.to_string(),
                workload: workload.to_string(),
                container: container
                    .get("name")
                    .and_then(Node::as_str)
                    .unwrap_or("<unnamed>")
                    .to_string(),
                image: image_node.as_str().unwrap_or_default().to_string(),
                pull_policy: container
                    .get("imagePullPolicy")
                    .and_then(Node::as_str)
                    .map(str::to_string),
                line: image_node.line(),
            });
        }
    }
}

/// What to do with a manifest that is a symbolic link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Symlinks {
    /// Refuse it: a link can pull any file the user can read (a docker
    /// config, a key) into a signed bundle that is then carried off site.
    #[default]
    Refuse,
    /// Follow it (`bundle build --follow-symlinks`), and say so.
    Follow,
}

/// A manifest that is a symbolic link, followed because it was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowedLink {
    pub link: PathBuf,
    /// Where the link points, fully resolved.
    pub target: PathBuf,
}

impl std::fmt::Display for FollowedLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "following the symbolic link {} -> {} (--follow-symlinks)",
            self.link.display(),
            self.target.display()
        )
    }
}

/// The manifest files of a directory (`*.yaml`, `*.yml`, `*.json`), sorted
/// by name. A manifest that is a symbolic link is refused, naming the link
/// and its target, unless `symlinks` says to follow it; then it must lead to
/// a regular file, and it is returned in the second list.
pub fn manifest_files(
    dir: &Path,
    symlinks: Symlinks,
) -> anyhow::Result<(Vec<PathBuf>, Vec<FollowedLink>)> {
    if !dir.exists() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut files = Vec::new();
    let mut followed = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let is_yaml = path
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json");
        if !is_yaml {
            continue;
        }
        // The entry's own type: a link is not followed to decide.
        let file_type = entry
            .file_type()
            .with_context(|| format!("reading {}", path.display()))?;
        if file_type.is_symlink() {
            let target = std::fs::read_link(&path)
                .with_context(|| format!("reading the link {}", path.display()))?;
            if symlinks == Symlinks::Refuse {
                anyhow::bail!(
                    "manifest {} is a symbolic link to {}: refusing to read it into the bundle \
                     (copy the file into {}, or pass --follow-symlinks to bundle build)",
                    path.display(),
                    target.display(),
                    dir.display()
                );
            }
            let resolved = std::fs::canonicalize(&path).with_context(|| {
                format!(
                    "manifest {} is a symbolic link to {}, which cannot be resolved",
                    path.display(),
                    target.display()
                )
            })?;
            if !resolved.is_file() {
                anyhow::bail!(
                    "manifest {} is a symbolic link to {}, which is not a regular file",
                    path.display(),
                    resolved.display()
                );
            }
            followed.push(FollowedLink {
                link: path.clone(),
                target: resolved,
            });
            files.push(path);
        } else if file_type.is_file() {
            files.push(path);
        }
    }
    files.sort();
    followed.sort_by(|a, b| a.link.cmp(&b.link));
    Ok((files, followed))
}

/// Every container image of every workload in the manifest files.
pub fn scan_manifests(files: &[PathBuf]) -> anyhow::Result<Vec<ManifestImage>> {
    let mut out = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let docs = parse_yaml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        for (i, doc) in docs.iter().enumerate() {
            images_in_doc(doc, file, i + 1, &mut out);
        }
    }
    Ok(out)
}

/// Why an image is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Sandbox,
    K3s,
    Manifest,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Sandbox => "sandbox",
            Source::K3s => "k3s",
            Source::Manifest => "manifest",
        }
    }
}

/// The wanted images, each with every reason it is wanted.
pub type WantedImages = BTreeMap<ImageRef, Vec<Source>>;

/// Whether a reference names a pause (pod sandbox) image.
pub fn is_pause_image(reference: &ImageRef) -> bool {
    let name = reference.repository.rsplit('/').next().unwrap_or_default();
    name == "pause" || name == "mirrored-pause"
}

/// Combines the three sources into the wanted set. Of the lock only the
/// sandbox entries count: any other entry is pinned for a reason that may
/// have gone.
pub fn wanted_images(
    lock: &ImagesLock,
    manifest_images: &[ManifestImage],
    k3s_images: &[ImageRef],
) -> anyhow::Result<WantedImages> {
    let mut wanted = WantedImages::new();
    let mut add = |reference: ImageRef, source: Source| {
        let sources = wanted.entry(reference).or_default();
        if !sources.contains(&source) {
            sources.push(source);
            sources.sort();
        }
    };
    for image in lock.images.iter().filter(|i| i.sandbox) {
        add(image.reference.clone(), Source::Sandbox);
    }
    for found in manifest_images {
        let reference: ImageRef = found.image.parse().with_context(|| {
            format!(
                "{}:{}: container {} of {} {}",
                found.file.display(),
                found.line,
                found.container,
                found.kind,
                found.workload
            )
        })?;
        add(reference, Source::Manifest);
    }
    for reference in k3s_images {
        if is_pause_image(reference) {
            add(reference.clone(), Source::Sandbox);
        }
        add(reference.clone(), Source::K3s);
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GUESTBOOK: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: redis-master
spec:
  template:
    spec:
      initContainers:
        - name: init
          image: busybox:1.32
      containers:
        - name: master
          image: kubeguide/redis-master:latest
          imagePullPolicy: IfNotPresent
---
apiVersion: v1
kind: Service
metadata:
  name: redis-master
spec:
  ports: [{port: 6379}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  jobTemplate:
    spec:
      template:
        spec:
          containers:
            - {name: job, image: "alpine"}
"#;

    #[test]
    fn finds_every_container_image_with_lines() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("g.yaml");
        std::fs::write(&file, GUESTBOOK).unwrap();
        let found = scan_manifests(&[file]).unwrap();
        let names: Vec<_> = found.iter().map(|f| f.image.as_str()).collect();
        assert_eq!(
            names,
            ["busybox:1.32", "kubeguide/redis-master:latest", "alpine"]
        );
        assert_eq!(found[0].container, "init");
        assert_eq!(found[0].line, 11);
        assert_eq!(found[1].pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(found[2].document, 3);
        assert_eq!(found[2].kind, "CronJob");
        assert_eq!(found[2].pull_policy, None);
    }

    #[test]
    fn a_linked_manifest_is_refused_unless_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("config.json");
        std::fs::write(&outside, r#"{"auths":{}}"#).unwrap();
        let manifests = dir.path().join("manifests");
        std::fs::create_dir(&manifests).unwrap();
        std::fs::write(manifests.join("app.yaml"), GUESTBOOK).unwrap();
        let link = manifests.join("creds.json");
        std::os::unix::fs::symlink(&outside, &link).unwrap();

        let err = manifest_files(&manifests, Symlinks::Refuse).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&format!(
                "manifest {} is a symbolic link to {}",
                link.display(),
                outside.display()
            )),
            "{msg}"
        );

        let (files, followed) = manifest_files(&manifests, Symlinks::Follow).unwrap();
        assert_eq!(files, [manifests.join("app.yaml"), link.clone()]);
        assert_eq!(
            followed,
            [FollowedLink {
                link,
                target: outside.canonicalize().unwrap()
            }]
        );

        // A dangling link is refused even when following.
        std::fs::remove_file(&outside).unwrap();
        let err = manifest_files(&manifests, Symlinks::Follow).unwrap_err();
        assert!(format!("{err:#}").contains("cannot be resolved"), "{err:#}");
    }

    #[test]
    fn wanted_set_merges_sources() {
        let lock = ImagesLock::parse(
            r#"{"version":1,"images":[{"reference":"docker.io/rancher/pause:3.1","sandbox":true},{"reference":"old:1"}]}"#,
        )
        .unwrap();
        let pause: ImageRef = "docker.io/rancher/pause:3.1".parse().unwrap();
        let wanted = wanted_images(&lock, &[], &[pause]).unwrap();
        let sources = &wanted[&"rancher/pause:3.1".parse::<ImageRef>().unwrap()];
        assert_eq!(sources, &[Source::Sandbox, Source::K3s]);
        assert_eq!(wanted.len(), 1, "a lock entry alone is not wanted");
    }
}
