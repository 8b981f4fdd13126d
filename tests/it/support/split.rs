//! Helpers of the split-bundle and USB-stick tests: the parts of a split
//! bundle as the build wrote them, copies of them to tamper with (drop one,
//! swap two, flip a byte), and the stick's files.

use std::path::{Path, PathBuf};

/// `BASE.part000`, `BASE.part001`, … that exist, in order.
pub fn parts(base: &Path) -> Vec<PathBuf> {
    (0..)
        .map(|i| PathBuf::from(format!("{}.part{i:03}", base.display())))
        .take_while(|p| p.is_file())
        .collect()
}

/// `BASE.parts`.
pub fn list(base: &Path) -> PathBuf {
    PathBuf::from(format!("{}.parts", base.display()))
}

pub fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// Copies the parts of `base` and their list into `dir` (created); returns
/// the copy's base path.
pub fn copy_split(base: &Path, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for p in parts(base).iter().chain([&list(base)]) {
        std::fs::copy(p, dir.join(file_name(p))).unwrap();
    }
    dir.join(file_name(base))
}

/// Swaps the contents of two files.
pub fn swap(a: &Path, b: &Path) {
    let tmp = a.with_extension("swap");
    std::fs::rename(a, &tmp).unwrap();
    std::fs::rename(b, a).unwrap();
    std::fs::rename(&tmp, b).unwrap();
}

/// Flips one byte in the middle of `path`, keeping its size.
pub fn flip_middle_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x55;
    std::fs::write(path, bytes).unwrap();
}

/// Concatenates the parts of `base` (what `cat base.part* > base` gives).
pub fn concatenated(base: &Path) -> Vec<u8> {
    parts(base)
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect()
}
