//! A ready USB stick: the bundle (in parts when the stick is FAT, which caps a
//! file at 4 GiB − 1, or when asked), the `airgap` binary that is running,
//! the public key the bundle is signed with, a `README.txt` with the exact
//! install commands, and `SHA256SUMS` of the stick's files.
//!
//! The copy on the stick is read back under the reader rules, signature
//! included, before any of it is renamed into place: a stick that holds a
//! bundle holds one that verifies with the key beside it.

use airgap_bundle::atomic::{AtomicFile, ModeSupport};
use airgap_bundle::digest::{Digest, Hasher, HashingReader};
use airgap_bundle::read::{read_bundle, DrainSink, Trust};
use airgap_bundle::sign::{self, PublicKey};
use airgap_bundle::source::{decompress, open_raw};
use airgap_bundle::space;
use airgap_bundle::split::{self, PartsReader, SplitWriter, FAT_MAX_FILE};
use anyhow::{bail, Context as _};
use serde::Serialize;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What goes on the stick besides the bundle.
pub struct UsbOptions {
    /// The stick's directory (its mount point, or a folder on it).
    pub dir: PathBuf,
    /// Part size asked for (`--split`); on FAT, 4 GiB − 1 when not given.
    pub split: Option<u64>,
    /// The key the bundle must verify with, written to the stick.
    pub public_key: PublicKey,
    /// File name of the key on the stick (`site.pub`): the constructors
    /// name it after the key file with [`sign::public_key_name`].
    pub key_name: String,
}

impl UsbOptions {
    /// For `bundle export`: the public key in `key_file`, which the bundle
    /// must verify with, on the stick as `<key file's stem>.pub`.
    pub fn from_public_key_file(
        dir: PathBuf,
        split: Option<u64>,
        key_file: &Path,
    ) -> anyhow::Result<UsbOptions> {
        Ok(UsbOptions {
            dir,
            split,
            public_key: sign::load_public_key(key_file)?,
            key_name: sign::public_key_name(key_file),
        })
    }

    /// For `bundle build --usb`: the public key of the secret key in
    /// `secret_key_file` (read now, so that a wrong password fails before the
    /// build), on the stick as `<key file's stem>.pub` (`site.key` gives
    /// `site.pub`).
    pub fn from_secret_key_file(
        dir: PathBuf,
        split: Option<u64>,
        secret_key_file: &Path,
        password: Option<String>,
    ) -> anyhow::Result<UsbOptions> {
        let secret_key = sign::load_secret_key(secret_key_file, password)?;
        let public_key = PublicKey::from_secret_key(&secret_key)
            .map_err(|e| anyhow::anyhow!("deriving the public key: {e}"))?;
        Ok(UsbOptions {
            dir,
            split,
            public_key,
            key_name: sign::public_key_name(secret_key_file),
        })
    }
}

/// What [`write_stick`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Stick {
    pub dir: PathBuf,
    /// The name to give `airgap install` (the file, or the parts' base name).
    pub bundle: String,
    /// Bundle parts, when split.
    pub parts: Vec<String>,
    pub file_system: String,
    pub key: String,
    pub key_id: String,
    /// Every file written, with its sha256 (also in the stick's SHA256SUMS).
    pub files: Vec<(String, Digest)>,
}

impl std::fmt::Display for Stick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "stick {} ({})", self.dir.display(), self.file_system)?;
        match self.parts.len() {
            0 => writeln!(f, "  bundle   {}", self.bundle)?,
            n => writeln!(
                f,
                "  bundle   {} in {n} parts, listed in {}.parts",
                self.bundle, self.bundle
            )?,
        }
        writeln!(f, "  key      {} (id {})", self.key, self.key_id)?;
        writeln!(
            f,
            "  also     airgap, README.txt (the install commands), SHA256SUMS"
        )?;
        write!(
            f,
            "  the copy verified with the key before it was published"
        )
    }
}

/// The file system type of `dir` as the kernel's mount table names it
/// (`vfat`, `ext4`, `fuse.fusefat`, …): the type of the mount whose mount
/// point is the longest prefix of `dir`. Falls back to `stat -f -c %T` when
/// `/proc/self/mountinfo` cannot be read.
pub fn file_system_type(dir: &Path) -> anyhow::Result<String> {
    let dir = std::fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(table) => mount_type(&table, &dir)
            .with_context(|| format!("{} is on no mount in /proc/self/mountinfo", dir.display())),
        Err(_) => stat_file_system_type(&dir),
    }
}

/// The type of the mount in `mountinfo` (proc(5)) that holds `dir`, an
/// absolute path without symlinks. Later lines win among equal mount points
/// (the one mounted last hides the others).
fn mount_type(mountinfo: &str, dir: &Path) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        let Some((fields, rest)) = line.split_once(" - ") else {
            continue;
        };
        let Some(point) = fields.split(' ').nth(4) else {
            continue;
        };
        let Some(fs_type) = rest.split(' ').next() else {
            continue;
        };
        let point = PathBuf::from(unescape_mount_field(point));
        if dir.starts_with(&point) {
            let depth = point.components().count();
            if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
                best = Some((depth, fs_type.to_string()));
            }
        }
    }
    best.map(|(_, t)| t)
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The file system type of `dir`, as `stat -f -c %T` names it.
fn stat_file_system_type(dir: &Path) -> anyhow::Result<String> {
    let mut cmd = Command::new("stat");
    cmd.args(["-f", "-c", "%T"]).arg(dir);
    tracing::debug!("running {cmd:?}");
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("; ")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// FAT12/16/32: the kernel's drivers (`vfat`, `msdos`; `stat -f` says
/// `msdos` for both) and the FUSE driver `fusefat`. exFAT has no 4 GiB cap.
pub fn is_fat(fs_type: &str) -> bool {
    matches!(fs_type, "msdos" | "vfat" | "fat" | "fuse.fusefat")
}

/// The part size for a stick of `fs_type`: FAT needs parts; elsewhere only
/// a requested `--split` splits.
pub fn part_size(fs_type: &str, requested: Option<u64>) -> anyhow::Result<Option<u64>> {
    if !is_fat(fs_type) {
        return Ok(requested);
    }
    match requested {
        Some(size) if size > FAT_MAX_FILE => bail!(
            "--split {size} is more than the {FAT_MAX_FILE} bytes a file on FAT ({fs_type}) can hold"
        ),
        Some(size) => Ok(Some(size)),
        None => Ok(Some(FAT_MAX_FILE)),
    }
}

fn file_name(path: &Path) -> anyhow::Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .with_context(|| format!("{} has no UTF-8 file name", path.display()))
}

/// The bundle's name without a part or list suffix.
fn bundle_base(bundle: &Path) -> PathBuf {
    if let Some((base, _)) = split::split_part_name(bundle) {
        return base;
    }
    match bundle
        .to_str()
        .and_then(|s| s.strip_suffix(split::PARTS_SUFFIX))
    {
        Some(base) if !base.is_empty() => PathBuf::from(base),
        _ => bundle.to_path_buf(),
    }
}

/// Writes the stick: the bundle `bundle` (a file or parts, as `open_bundle`
/// takes it) copied and verified, then the binary, the key, the README and
/// the checksums.
pub fn write_stick(bundle: &Path, opts: &UsbOptions) -> anyhow::Result<Stick> {
    if !opts.dir.is_dir() {
        bail!(
            "{} is not a directory (mount the stick first)",
            opts.dir.display()
        );
    }
    let exe = std::env::current_exe().context("finding the airgap binary")?;
    let needed = StickSize::of(bundle, &exe)?;
    if let Some(free) = space::free_bytes(&opts.dir) {
        if free < needed.total() {
            return Err(anyhow::Error::new(needed.short_of(
                &opts.dir,
                free,
                "nothing was written",
            )));
        }
    }
    let mut published = Vec::new();
    write_stick_files(bundle, &exe, opts, &mut published).map_err(|e| {
        // What this run published goes again: a stick is complete or
        // holds nothing of this run.
        for path in &published {
            let _ = std::fs::remove_file(path);
        }
        space::explain(e, || {
            let free = space::free_bytes(&opts.dir).unwrap_or(0);
            needed.short_of(&opts.dir, free, "nothing of this run is left on the stick")
        })
    })
}

/// What a stick needs: the bundle, the binary, and a margin for the key,
/// README.txt, SHA256SUMS and the parts list.
struct StickSize {
    bundle: u64,
    binary: u64,
}

impl StickSize {
    const SMALL_FILES: u64 = 64 << 10;

    fn of(bundle: &Path, exe: &Path) -> anyhow::Result<StickSize> {
        let size = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.len())
                .with_context(|| format!("reading the size of {}", p.display()))
        };
        let bundle = match split::locate(bundle)? {
            split::Located::Single(path) => size(&path)?,
            split::Located::Parts { manifest, .. } => manifest.parts.iter().map(|p| p.size).sum(),
        };
        Ok(StickSize {
            bundle,
            binary: size(exe)?,
        })
    }

    fn total(&self) -> u64 {
        self.bundle + self.binary + Self::SMALL_FILES
    }

    fn short_of(&self, dir: &Path, free: u64, outcome: &str) -> space::NoSpace {
        space::NoSpace {
            path: dir.to_path_buf(),
            needed: space::Needed::About(self.total().saturating_sub(free)),
            detail: format!(
                "the bundle ({}), airgap ({}) and the key, README.txt and SHA256SUMS need {}, {} is free; {outcome}",
                space::human(self.bundle),
                space::human(self.binary),
                space::human(self.total()),
                space::human(free)
            ),
        }
    }
}

fn write_stick_files(
    bundle: &Path,
    exe: &Path,
    opts: &UsbOptions,
    published: &mut Vec<PathBuf>,
) -> anyhow::Result<Stick> {
    let fs_type = file_system_type(&opts.dir)?;
    let part_size = part_size(&fs_type, opts.split)?;
    let base_name = file_name(&bundle_base(bundle))?;
    let dest = opts.dir.join(&base_name);
    let mut files: Vec<(String, Digest)> = Vec::new();

    // The bundle: copy, verify the copy, publish.
    let mut source = HashingReader::new(open_raw(bundle)?);
    let mut parts = Vec::new();
    match part_size {
        Some(size) => {
            let mut writer = SplitWriter::create(&dest, size)?;
            io::copy(&mut source, &mut writer)
                .with_context(|| format!("copying {} to {}", bundle.display(), dest.display()))?;
            let written = writer.finish()?;
            let copied = source.finish();
            if written.manifest.sha256 != copied.digest {
                bail!(
                    "the copy of {} on the stick differs from it",
                    bundle.display()
                );
            }
            verify_copy(
                PartsReader::unlisted(&written.temp_paths()),
                &opts.public_key,
                &dest,
            )?;
            let committed = written.commit()?;
            published.extend(committed.parts.iter().cloned());
            published.push(committed.manifest_path.clone());
            for (p, info) in committed.parts.iter().zip(&committed.manifest.parts) {
                files.push((file_name(p)?, info.sha256));
                parts.push(file_name(p)?);
            }
            let list = std::fs::read(&committed.manifest_path)?;
            files.push((file_name(&committed.manifest_path)?, Digest::of(&list)));
        }
        None => {
            let mut out = AtomicFile::create_with_mode(&dest, 0o644, ModeSupport::IfKept)?;
            io::copy(&mut source, &mut out)
                .with_context(|| format!("copying {} to {}", bundle.display(), dest.display()))?;
            let copied = source.finish();
            let file = std::fs::File::open(out.temp_path())?;
            verify_copy(file, &opts.public_key, &dest)?;
            published.push(out.commit()?);
            files.push((base_name.clone(), copied.digest));
        }
    }

    // The binary that is running: the one that built and verified this.
    let digest = copy_file(exe, &opts.dir.join("airgap"), 0o755)?;
    published.push(opts.dir.join("airgap"));
    files.push(("airgap".into(), digest));

    let key_text = opts
        .public_key
        .to_box()
        .map_err(|e| anyhow::anyhow!("encoding the public key: {e}"))?
        .into_string();
    files.push((
        opts.key_name.clone(),
        write_small(&opts.dir.join(&opts.key_name), key_text.as_bytes())?,
    ));
    published.push(opts.dir.join(&opts.key_name));
    let key_id = sign::public_key_id(&opts.public_key);
    let readme = readme(&base_name, &parts, &opts.key_name, &key_id);
    files.push((
        "README.txt".into(),
        write_small(&opts.dir.join("README.txt"), readme.as_bytes())?,
    ));
    published.push(opts.dir.join("README.txt"));
    let sums: String = files
        .iter()
        .map(|(name, d)| format!("{}  {name}\n", d.hex()))
        .collect();
    write_small(&opts.dir.join("SHA256SUMS"), sums.as_bytes())?;

    Ok(Stick {
        dir: opts.dir.clone(),
        bundle: base_name,
        parts,
        file_system: fs_type,
        key: opts.key_name.clone(),
        key_id,
        files,
    })
}

/// Reads the copy under the reader rules, signature first.
fn verify_copy<R: Read + Send + 'static>(
    raw: R,
    key: &PublicKey,
    dest: &Path,
) -> anyhow::Result<()> {
    let stream = decompress(BufReader::with_capacity(1 << 20, raw))?;
    read_bundle(stream, &Trust::Key(key.clone()), &mut DrainSink).with_context(|| {
        format!(
            "the copy of the bundle written to {} does not verify; nothing was published",
            dest.display()
        )
    })?;
    Ok(())
}

fn copy_file(from: &Path, to: &Path, mode: u32) -> anyhow::Result<Digest> {
    let mut input = HashingReader::new(
        std::fs::File::open(from).with_context(|| format!("opening {}", from.display()))?,
    );
    let mut out = AtomicFile::create_with_mode(to, mode, ModeSupport::IfKept)?;
    io::copy(&mut input, &mut out).with_context(|| format!("writing {}", to.display()))?;
    out.commit()?;
    Ok(input.finish().digest)
}

fn write_small(to: &Path, bytes: &[u8]) -> anyhow::Result<Digest> {
    let mut out = AtomicFile::create_with_mode(to, 0o644, ModeSupport::IfKept)?;
    out.write_all(bytes)
        .with_context(|| format!("writing {}", to.display()))?;
    out.commit()?;
    let mut h = Hasher::new();
    h.update(bytes);
    Ok(h.finish().digest)
}

/// The stick's README: what is on it and the exact commands.
pub fn readme(bundle: &str, parts: &[String], key: &str, key_id: &str) -> String {
    let what = match parts {
        [] => format!("  {bundle}\n      the bundle: k3s, its images and the workloads', signed\n"),
        [first, .., last] => format!(
            "  {first} .. {last}, {bundle}.parts\n      the bundle in {} parts (FAT cannot hold a file of 4 GiB), and their\n      list; airgap reads them as one. Give airgap the name {bundle}.\n",
            parts.len()
        ),
        [only] => format!(
            "  {only}, {bundle}.parts\n      the bundle as one part, and its list. Give airgap the name {bundle}.\n"
        ),
    };
    let usb = "/media/usb";
    let arch = std::env::consts::ARCH;
    let fingerprint = airgap_bundle::sign::fingerprint(key_id);
    format!(
        "airgap: install k3s on machines without internet access\n\
         ========================================================\n\
         \n\
         First, trust nothing on this stick by itself. Whoever could write to it\n\
         could have replaced the bundle, the key and the installer together, and\n\
         signed their own bundle. Compare the key's id with the fingerprint you\n\
         were given out of band (on paper, by phone; never from this stick):\n\
         \n\
         \x20 {key}: key id {key_id}, fingerprint {fingerprint}\n\
         \n\
         and give every install that id with --expect-key-id (or AIRGAP_KEY_ID),\n\
         typed from what you were given, so that a swapped key is refused. Prefer\n\
         an airgap binary you brought yourself to the one on the stick.\n\
         \n\
         On this stick:\n\
         {what}\
         \x20 airgap\n      the installer (Linux, {arch}); run it as root\n\
         \x20 {key}\n      the public key (id {key_id}) the bundle must be signed with\n\
         \x20 SHA256SUMS\n      checksums of these files: sha256sum -c SHA256SUMS\n\
         \n\
         Below, the stick is mounted at {usb}; use your mount point.\n\
         \n\
         On every node, as root, first:\n\
         \n\
         \x20 export AIRGAP_KEY_ID='<the key id you were given>'\n\
         \x20 install -m 0755 {usb}/airgap /usr/local/bin/airgap\n\
         \x20 airgap bundle verify {usb}/{bundle} --key {usb}/{key}\n\
         \n\
         On the server (here 192.168.40.160; use its address):\n\
         \n\
         \x20 airgap install --offline {usb}/{bundle} --key {usb}/{key} --role server\n\
         \x20 airgap token --out {usb}/node-token --server https://192.168.40.160:6443\n\
         \n\
         `airgap token --out` writes the join token to the stick for the agents\n\
         (on FAT its 0600 mode is not kept: the token is a secret, delete it from\n\
         the stick once every node has joined).\n\
         \n\
         On each agent:\n\
         \n\
         \x20 airgap install --offline {usb}/{bundle} --key {usb}/{key} --role agent \\\n\
         \x20     --server https://192.168.40.160:6443 --token-file {usb}/node-token\n\
         \x20 airgap status\n\
         \n\
         More servers (HA): install the first one with --cluster-init, then the\n\
         others with --role server and the same --server and --token-file as an\n\
         agent. `airgap install --help` lists every option.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat_sticks_get_parts() {
        assert_eq!(part_size("msdos", None).unwrap(), Some(FAT_MAX_FILE));
        assert_eq!(part_size("vfat", Some(1 << 20)).unwrap(), Some(1 << 20));
        assert!(part_size("msdos", Some(4 << 30)).is_err());
        assert_eq!(part_size("ext4", None).unwrap(), None);
        assert_eq!(part_size("exfat", Some(4096)).unwrap(), Some(4096));
        let here = file_system_type(Path::new(".")).unwrap();
        assert!(!here.is_empty());
    }

    #[test]
    fn mount_table_gives_the_type_of_the_deepest_mount() {
        let table = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:25 / /media rw shared:2 - tmpfs tmpfs rw
31 30 0:26 / /media/my\\040stick rw - fuse.fusefat /dev/loop0 rw
32 30 8:17 / /media/usb rw - vfat /dev/sdb1 rw,fmask=0022
33 30 0:28 / /media/usb rw - exfat /dev/sdc1 rw
";
        let at = |p: &str| mount_type(table, Path::new(p));
        assert_eq!(at("/home/op").as_deref(), Some("ext4"));
        assert_eq!(at("/media").as_deref(), Some("tmpfs"));
        assert_eq!(at("/media/my stick/x").as_deref(), Some("fuse.fusefat"));
        assert_eq!(at("/media/usbx").as_deref(), Some("tmpfs"));
        // Mounted over: the later mount hides the earlier one.
        assert_eq!(at("/media/usb").as_deref(), Some("exfat"));
        assert!(is_fat("fuse.fusefat") && is_fat("vfat") && !is_fat("exfat"));
    }

    #[test]
    fn either_key_file_names_the_same_key_on_the_stick() {
        let dir = tempfile::tempdir().unwrap();
        let keys = sign::generate(None).unwrap();
        let (sk, pk) = (dir.path().join("site.key"), dir.path().join("site.pub"));
        std::fs::write(&sk, &keys.secret_key_file).unwrap();
        std::fs::write(&pk, &keys.public_key_file).unwrap();
        let stick = dir.path().join("stick");
        let built = UsbOptions::from_secret_key_file(stick.clone(), None, &sk, None).unwrap();
        let exported = UsbOptions::from_public_key_file(stick, Some(1 << 20), &pk).unwrap();
        assert_eq!(built.key_name, "site.pub");
        assert_eq!(exported.key_name, "site.pub");
        assert_eq!(exported.split, Some(1 << 20));
        assert_eq!(sign::public_key_id(&built.public_key), keys.key_id);
        assert_eq!(sign::public_key_id(&exported.public_key), keys.key_id);
    }

    #[test]
    fn readme_names_the_bundle_and_key() {
        let parts = vec!["b.tar.zst.part000".to_string(), "b.tar.zst.part001".into()];
        let text = readme("b.tar.zst", &parts, "site.pub", "ABCD");
        assert!(text.contains("--offline /media/usb/b.tar.zst --key /media/usb/site.pub"));
        assert!(text.contains("b.tar.zst.part000 .. b.tar.zst.part001"));
        assert!(text.contains("airgap token --out /media/usb/node-token"));
        assert!(readme("b.tar.zst", &[], "k.pub", "AB").contains("  b.tar.zst\n"));
        // The out-of-band check comes before every command.
        let check = text
            .find("fingerprint you\nwere given out of band")
            .unwrap();
        let first_command = text.find("install -m 0755").unwrap();
        assert!(check < first_command, "{text}");
        assert!(text.contains("key id ABCD, fingerprint ABCD"), "{text}");
        assert!(text.contains("AIRGAP_KEY_ID"), "{text}");
    }
}
