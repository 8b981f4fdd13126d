//! The one rule for names inside a bundle: a relative path of plain
//! components. Every entry name and every `SHA256SUMS` line passes through
//! [`check_entry_path`] before it is used for anything, so no later stage has
//! to think about `..`, absolute paths, backslashes or control characters.

/// Longest entry name accepted.
pub const MAX_PATH_LEN: usize = 1024;
/// Longest single path component accepted.
pub const MAX_COMPONENT_LEN: usize = 255;

/// Why a name is not acceptable inside a bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("entry {0:?}: empty name")]
    Empty(String),
    #[error("entry {0:?}: absolute path")]
    Absolute(String),
    #[error("entry {0:?}: contains `..`")]
    ParentDir(String),
    #[error("entry {0:?}: contains an empty or `.` component")]
    EmptyComponent(String),
    #[error("entry {0:?}: contains a backslash, a control character or a character outside printable ASCII")]
    BadCharacter(String),
    #[error("entry {0:?}: name too long")]
    TooLong(String),
}

/// Checks that `path` is a safe relative name (directories may end in `/`,
/// which is stripped) and returns it normalised.
pub fn check_entry_path(path: &str) -> Result<&str, PathError> {
    let owned = || path.to_string();
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong(owned()));
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute(owned()));
    }
    // Printable ASCII only: no backslash (Windows separators), no control
    // characters, no Unicode look-alikes of `/` or `.`.
    if path
        .bytes()
        .any(|b| !(0x20..0x7f).contains(&b) || b == b'\\')
    {
        return Err(PathError::BadCharacter(owned()));
    }
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    if trimmed.is_empty() {
        return Err(PathError::Empty(owned()));
    }
    for component in trimmed.split('/') {
        match component {
            ".." => return Err(PathError::ParentDir(owned())),
            "" | "." => return Err(PathError::EmptyComponent(owned())),
            c if c.len() > MAX_COMPONENT_LEN => return Err(PathError::TooLong(owned())),
            _ => {}
        }
    }
    Ok(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_relative_paths() {
        assert_eq!(check_entry_path("bin/amd64/k3s").unwrap(), "bin/amd64/k3s");
        assert_eq!(check_entry_path("images/").unwrap(), "images");
        assert!(check_entry_path("images/blobs/sha256/ab").is_ok());
    }

    #[test]
    fn rejects_hostile_paths() {
        for bad in [
            "",
            "/",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "./../x",
            "a//b",
            "./a",
            "a/./b",
            "a\\..\\b",
            "..\\x",
            "a\u{0}b",
            "a\nb",
            "\u{2025}/x",
            "a/\u{ff0e}\u{ff0e}/b",
        ] {
            assert!(check_entry_path(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_entry_path(&"a/".repeat(600)).is_err());
    }
}
