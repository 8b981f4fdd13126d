//! A private containerd (Debian's `/usr/bin/containerd`) for tests: its own
//! root, state dir, config, log and socket in a temp dir, the CRI plugin off,
//! overlayfs as the snapshotter, driven with the real `ctr`.
//!
//! Like the registry, containerd runs under a small `sh` watchdog whose stdin
//! is a pipe held by [`Containerd`]. When the handle is dropped or stopped, or
//! this process dies for any reason (even SIGKILL), the pipe closes and the
//! watchdog stops containerd, kills the shims that serve it, unmounts what is
//! still mounted under its root (the rootfs of a `ctr run`) and removes the
//! temp dir. [`Drop`] then does the same unmounting itself, in case the
//! watchdog could not.
//!
//! [`Containerd::kill`] SIGKILLs the daemon alone, as a crash would, keeping
//! its root, state and socket path; [`Containerd::restart`] starts it again
//! on them (tests of an import that loses its containerd midway).
//!
//! runc keeps its own state under `/run/containerd/runc/<namespace>`, shared
//! by every containerd on the host: give containers unique ids
//! ([`Containerd::unique_id`]).

use anyhow::{bail, Context, Result};
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The containerd daemon (Debian package `containerd`).
pub const CONTAINERD_PROGRAM: &str = "/usr/bin/containerd";
/// Its client.
pub const CTR_PROGRAM: &str = "/usr/bin/ctr";

/// How long [`Containerd::start`] waits for `ctr version` to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one [`Containerd::ctr`] call may take before it is killed.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs containerd; when this shell's stdin reaches end of file, stops it
/// (TERM, then KILL), kills its shims, unmounts everything under its root and
/// removes the temp dir. When containerd exits on its own, the shell exits
/// with it and leaves the dir (and its log) to the owner.
/// `$1` config, `$2` log file, `$3` program, `$4` temp dir, `$5` socket.
const WATCHDOG: &str = r#"
exec 3<&0
"$3" --config "$1" </dev/null 3<&- >>"$2" 2>&1 &
pid=$!
(
  read -r _ <&3
  : >"$4/.stopping"
  kill -TERM "$pid"
  i=0
  while kill -0 "$pid" && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  kill -KILL "$pid"
) 2>/dev/null &
exec 3<&-
wait "$pid"
[ -e "$4/.stopping" ] || exit 0
for p in /proc/[0-9]*; do
  if tr '\0' ' ' <"$p/cmdline" | grep -qF -- "-address $5 "; then kill -KILL "${p#/proc/}"; fi
done 2>/dev/null
awk -v d="$4/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r |
  while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
rm -rf --one-file-system "$4"
"#;

/// A running private containerd. Stopped, unmounted and removed on drop.
pub struct Containerd {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    watchdog: Option<Child>,
    stdin: Option<ChildStdin>,
}

impl Containerd {
    /// Starts containerd in a new temp dir under the system temp dir.
    pub fn start() -> Result<Containerd> {
        Self::start_in(std::env::temp_dir())
    }

    /// Starts containerd in a new temp dir under `parent` (keep it short:
    /// the socket path must fit in 108 bytes).
    pub fn start_in(parent: impl AsRef<Path>) -> Result<Containerd> {
        let dir = tempfile::Builder::new()
            .prefix("airgap-containerd-")
            .tempdir_in(parent.as_ref())
            .context("creating containerd's temp dir")?;
        let path = dir.path().to_path_buf();
        let mut cd = Containerd {
            dir: Some(dir),
            path,
            watchdog: None,
            stdin: None,
        };
        if cd.socket().as_os_str().len() >= 100 {
            bail!(
                "containerd socket path {} is too long for a unix socket",
                cd.socket().display()
            );
        }
        std::fs::write(cd.path.join("config.toml"), cd.config_toml())?;
        std::fs::write(cd.log_path(), b"")?;
        cd.spawn()?;
        Ok(cd)
    }

    /// Starts the watchdog, and under it containerd, on this dir; waits
    /// until containerd answers.
    fn spawn(&mut self) -> Result<()> {
        let cd = self;
        let config = cd.path.join("config.toml");
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("airgap-containerd-watchdog")
            .arg(&config)
            .arg(cd.log_path())
            .arg(CONTAINERD_PROGRAM)
            .arg(&cd.path)
            .arg(cd.socket())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {CONTAINERD_PROGRAM} under /bin/sh"))?;
        let mut child = child;
        cd.stdin = child.stdin.take();
        cd.watchdog = Some(child);
        cd.wait_ready()
    }

    /// containerd's pid: the watchdog's child running [`CONTAINERD_PROGRAM`].
    pub fn daemon_pid(&self) -> Option<u32> {
        let watchdog = self.watchdog.as_ref()?.id();
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces.
            let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == watchdog && comm == "containerd").then_some(pid)
        })
    }

    /// SIGKILLs containerd alone, as a crash would: its root, state, log and
    /// config stay (and its stale socket file); the watchdog exits with it.
    /// [`Containerd::restart`] brings it back on the same dir.
    pub fn kill(&mut self) -> Result<()> {
        let pid = self
            .daemon_pid()
            .context("containerd is not running under its watchdog")?;
        let status = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -KILL {pid} failed ({status})");
        }
        let mut watchdog = self.watchdog.take().context("no watchdog")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while watchdog.try_wait()?.is_none() {
            if Instant::now() > deadline {
                crate::watchdog::wait_or_kill(&mut watchdog, Duration::from_secs(1));
                bail!("containerd's watchdog did not exit after containerd was killed");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // The watchdog's reader of the pipe now wakes, marks the dir as
        // stopping and finds containerd gone; wait for it, then unmark.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.watchdog_helpers() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(self.path.join(".stopping"));
        Ok(())
    }

    /// Starts containerd again on the dir a [`Containerd::kill`] left, and
    /// waits until it answers.
    pub fn restart(&mut self) -> Result<()> {
        if self.watchdog.is_some() {
            bail!("containerd at {} is still running", self.socket().display());
        }
        self.spawn()
    }

    /// Processes still running this dir's watchdog script (forks of it).
    fn watchdog_helpers(&self) -> usize {
        let dir = self.path.to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            })
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).into_owned())
            .filter(|c| c.contains("airgap-containerd-watchdog") && c.contains(&dir))
            .count()
    }

    fn config_toml(&self) -> String {
        let p = |name: &str| toml_string(&self.path.join(name));
        format!(
            "version = 2\n\
             root = {root}\n\
             state = {state}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             \n\
             [grpc]\n  address = {sock}\n\
             \n\
             [ttrpc]\n  address = {ttrpc}\n\
             \n\
             [plugins]\n\
             \x20 [plugins.\"io.containerd.internal.v1.opt\"]\n    path = {opt}\n\
             \x20 [plugins.\"io.containerd.service.v1.diff-service\"]\n    default = [\"walking\"]\n",
            root = p("root"),
            state = p("state"),
            sock = toml_string(&self.socket()),
            ttrpc = p("containerd.sock.ttrpc"),
            opt = p("opt"),
        )
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let log = self.log_path();
            crate::watchdog::still_starting(self.watchdog.as_mut(), "containerd", &log)?;
            if self.socket().exists() {
                if let Ok(out) = self.ctr_with_timeout(&["version"], Duration::from_secs(5)) {
                    if out.status.success() {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd at {} did not answer `ctr version` within {:?}; log tail:\n{}",
                    self.socket().display(),
                    READY_TIMEOUT,
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The temp dir (config, log, root, state, socket).
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// containerd's root (content store, snapshots, metadata).
    pub fn root(&self) -> PathBuf {
        self.path.join("root")
    }

    /// The gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.path.join("containerd.sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.path.join("containerd.log")
    }

    /// The last `lines` lines of containerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::watchdog::log_tail(&self.log_path(), lines)
    }

    /// Whether containerd is still running.
    pub fn is_running(&mut self) -> bool {
        crate::watchdog::running(self.watchdog.as_mut())
    }

    /// Runs `ctr --address SOCK ARGS...` and returns what it did, killing it
    /// after [`CTR_TIMEOUT`]. An error only when `ctr` could not run or timed
    /// out; a failing `ctr` is an `Ok` with its status.
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        self.ctr_with_timeout(args, CTR_TIMEOUT)
    }

    /// [`Containerd::ctr`] with a timeout of its own.
    pub fn ctr_with_timeout(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        let mut cmd = Command::new(CTR_PROGRAM);
        cmd.arg("--address").arg(self.socket()).args(args);
        output_with_timeout(&mut cmd, timeout)
            .with_context(|| format!("running ctr {}", args.join(" ")))
    }

    /// Runs `ctr` and returns its stdout; an error naming the command, with
    /// the tail of its stderr, when it fails.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr(args)?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "ctr {} failed ({}):\n{}",
                args.join(" "),
                out.status,
                tail.join("\n")
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A container id no other test on this host uses (runc's state is
    /// shared by every containerd).
    pub fn unique_id(prefix: &str) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        format!(
            "{prefix}-{}-{}-{nanos:x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        )
    }

    /// Stops containerd, kills its shims and unmounts what it left mounted.
    /// The temp dir is removed by the watchdog or on drop. Idempotent.
    pub fn stop(&mut self) {
        // Closing the pipe makes the watchdog stop containerd and clean up.
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        if let Some(mut child) = self.watchdog.take() {
            crate::watchdog::wait_or_kill(&mut child, Duration::from_secs(20));
        }
        unmount_under(&self.path);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = self.dir.take() {
            // Nothing is mounted below any more; never follow into a mount
            // that could not be removed.
            if mounts_under(&self.path).is_empty() {
                let _ = dir.close();
            } else {
                let _ = dir.keep();
            }
        }
    }
}

/// Quotes a path as a TOML basic string.
fn toml_string(path: &Path) -> String {
    let s = path.display().to_string();
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .map(|m| PathBuf::from(unescape_mount_path(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    found.dedup();
    found
}

/// Unmounts everything at or below `dir` (recursively, lazily when busy).
pub fn unmount_under(dir: &Path) {
    for m in mounts_under(dir) {
        let ok = Command::new("umount")
            .arg("-R")
            .arg(&m)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&m)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `/proc/self/mounts` writes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `cmd` with stdin closed, collecting its output; kills it and fails
/// after `timeout`.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            bail!(
                "{:?} did not finish within {timeout:?}; stderr:\n{}",
                cmd.get_program(),
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mount_paths() {
        assert_eq!(unescape_mount_path(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mount_path(r"/tmp/x\134y"), r"/tmp/x\y");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
        assert_eq!(unescape_mount_path(r"/end\04"), r"/end\04");
    }

    #[test]
    fn quotes_toml_strings() {
        assert_eq!(toml_string(Path::new(r#"/a"b\c"#)), r#""/a\"b\\c""#);
    }

    #[test]
    fn starts_answers_and_cleans_up() {
        let mut cd = Containerd::start().unwrap();
        let out = cd.ctr_ok(&["version"]).unwrap();
        assert!(out.contains("Server:"), "{out}");
        let out = cd.ctr_ok(&["-n", "k8s.io", "images", "ls", "-q"]).unwrap();
        assert_eq!(out.trim(), "");
        let plugins = cd.ctr_ok(&["plugins", "ls"]).unwrap();
        assert!(
            !plugins.contains("io.containerd.grpc.v1.cri"),
            "the CRI plugin should be off:\n{plugins}"
        );
        assert!(cd.is_running());
        let dir = cd.dir().to_path_buf();
        assert!(cd.socket().starts_with(&dir));
        cd.stop();
        assert!(!cd.is_running());
        assert!(!cd.socket().exists(), "containerd's socket outlived it");
        drop(cd);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }

    #[test]
    fn killed_and_restarted_keeps_its_metadata() {
        let mut cd = Containerd::start().unwrap();
        let dir = cd.dir().to_path_buf();
        let first = cd.daemon_pid().unwrap();
        cd.ctr_ok(&["-n", "k8s.io", "leases", "create", "--id", "held"])
            .unwrap();
        cd.kill().unwrap();
        assert!(!cd.is_running());
        assert!(!Path::new(&format!("/proc/{first}")).exists());
        assert!(dir.is_dir(), "the dir stays for a restart");
        let down = cd.ctr_with_timeout(&["version"], Duration::from_secs(5));
        assert!(!down.is_ok_and(|o| o.status.success()));
        cd.restart().unwrap();
        assert!(cd.is_running());
        assert_ne!(cd.daemon_pid(), Some(first));
        let leases = cd.ctr_ok(&["-n", "k8s.io", "leases", "ls"]).unwrap();
        assert!(leases.contains("held"), "{leases}");
        drop(cd);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }

    #[test]
    fn times_out_a_hanging_command() {
        let err = output_with_timeout(
            Command::new("/bin/sleep").arg("5"),
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("did not finish"), "{err:#}");
    }
}
