//! Image references, normalised the way containerd and Kubernetes name images:
//! `redis` is `docker.io/library/redis:latest`, `kubeguide/redis-master` is
//! `docker.io/kubeguide/redis-master:latest`. The full form is what the bundle
//! records and what containerd's image records are named by.

use crate::digest::Digest;
use std::fmt;
use std::str::FromStr;

pub const DEFAULT_REGISTRY: &str = "docker.io";

/// A normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// Registry host, with port if any (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Repository path (`library/redis`).
    pub repository: String,
    /// Tag, when the reference has one (`latest` when it had neither tag nor digest).
    pub tag: Option<String>,
    /// Digest, when the reference pins one.
    pub digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {0:?}: {1}")]
pub struct InvalidReference(pub String, pub &'static str);

impl ImageRef {
    /// Whether the reference had no tag or the tag `latest`, and no digest:
    /// the images whose content can change under the same name.
    pub fn is_floating(&self) -> bool {
        self.digest.is_none() && self.tag.as_deref().is_none_or(|t| t == "latest")
    }

    /// The same image without its digest pin (`name:tag`).
    pub fn without_digest(&self) -> ImageRef {
        ImageRef {
            digest: None,
            ..self.clone()
        }
    }

    /// The same image pinned to `digest`.
    pub fn with_digest(&self, digest: Digest) -> ImageRef {
        ImageRef {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

fn valid_component(s: &str) -> bool {
    s.as_bytes()
        .first()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

impl FromStr for ImageRef {
    type Err = InvalidReference;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |why| InvalidReference(input.to_string(), why);
        if input.is_empty() || input.len() > MAX_REFERENCE || input.trim() != input {
            return Err(err("empty, too long or padded with spaces"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(d.parse::<Digest>().map_err(|_| err("bad digest"))?),
            ),
            None => (input, None),
        };
        // A tag follows the last ':' only when no '/' comes after it (a ':'
        // before a '/' is a registry port).
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(rest[i + 1..].to_string())),
            _ => (rest, None),
        };
        if let Some(t) = &tag {
            if t.is_empty()
                || t.len() > 128
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(err("bad tag"));
            }
        }
        let mut parts: Vec<&str> = name.split('/').collect();
        let first = parts[0];
        let registry = if parts.len() > 1
            && (first.contains('.') || first.contains(':') || first == "localhost")
        {
            parts.remove(0);
            first.to_string()
        } else {
            DEFAULT_REGISTRY.to_string()
        };
        if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            return Err(err("use docker.io as the registry name"));
        }
        if !registry
            .as_bytes()
            .first()
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'[')
            || registry.contains("..")
            || registry
                .bytes()
                .any(|b| !(b.is_ascii_alphanumeric() || b".-:[]".contains(&b)))
        {
            return Err(err("bad registry host"));
        }
        if parts.is_empty() || !parts.iter().all(|p| valid_component(p)) {
            return Err(err("bad repository name"));
        }
        if registry == DEFAULT_REGISTRY && parts.len() == 1 {
            parts.insert(0, "library");
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        let parsed = ImageRef {
            registry,
            repository: parts.join("/"),
            tag,
            digest,
        };
        // Written in full (`docker.io/`, `library/`, `:latest` added) it must
        // still be a reference this parser takes: what is read is written
        // back to images.lock and bundle.json.
        if parsed.to_string().len() > MAX_REFERENCE {
            return Err(err("too long once written in full"));
        }
        Ok(parsed)
    }
}

/// The longest reference accepted, as written or in full.
pub const MAX_REFERENCE: usize = 512;

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for ImageRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ImageRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        s.parse::<ImageRef>().unwrap().to_string()
    }

    #[test]
    fn normalises_like_containerd() {
        assert_eq!(norm("redis"), "docker.io/library/redis:latest");
        assert_eq!(
            norm("kubeguide/redis-master"),
            "docker.io/kubeguide/redis-master:latest"
        );
        assert_eq!(norm("rancher/pause:3.1"), "docker.io/rancher/pause:3.1");
        assert_eq!(norm("127.0.0.1:5000/a/b:v1"), "127.0.0.1:5000/a/b:v1");
        assert_eq!(norm("localhost/x"), "localhost/x:latest");
        let d = Digest::of(b"x");
        assert_eq!(
            norm(&format!("busybox@{d}")),
            format!("docker.io/library/busybox@{d}")
        );
        assert!(norm("redis:latest")
            .parse::<ImageRef>()
            .unwrap()
            .is_floating());
        assert!(!"redis:6".parse::<ImageRef>().unwrap().is_floating());
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "UPPER/case",
            "a//b",
            "a:b:c:",
            " x",
            "x@sha256:zz",
            "../x",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad}");
        }
    }
}
