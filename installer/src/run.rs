//! Every external program the installer runs (`systemctl`, `rc-update`,
//! `kill`, `modprobe`, `sysctl`) goes through one [`Runner`], which logs the
//! command line and puts the tail of its stderr into the error. Tests swap in
//! a [`Recorder`] where the real program cannot run (no systemd as PID 1 here).

use anyhow::bail;
use std::process::Command;
use std::sync::Mutex;

pub trait Runner: Send + Sync {
    /// Runs `program args`, returning its stdout; a non-zero exit is an
    /// error naming the command and quoting the end of its stderr.
    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String>;
}

/// Runs the real programs.
pub struct HostRunner;

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Runner for HostRunner {
    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let line = format!("{program} {}", args.join(" "));
        tracing::info!(command = %line, "running");
        let out = Command::new(program)
            .args(args)
            .output()
            .map_err(|e| anyhow::anyhow!("running {line}: {e}"))?;
        if !out.status.success() {
            bail!(
                "{line} failed ({}): {}",
                out.status,
                tail(&String::from_utf8_lossy(&out.stderr), 5)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Records command lines instead of running them (tests, `--dry-run`).
#[derive(Default)]
pub struct Recorder {
    pub commands: Mutex<Vec<String>>,
}

impl Runner for Recorder {
    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        self.commands
            .lock()
            .expect("recorder lock")
            .push(format!("{program} {}", args.join(" ")));
        Ok(String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_runner_reports_stderr_tail() {
        let err = HostRunner
            .run("sh", &["-c", "echo one >&2; echo two >&2; exit 3"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("sh -c"), "{err}");
        assert!(err.contains("one\ntwo"), "{err}");
        assert_eq!(HostRunner.run("echo", &["hi"]).unwrap(), "hi\n");
        let r = Recorder::default();
        r.run("systemctl", &["daemon-reload"]).unwrap();
        assert_eq!(r.commands.lock().unwrap()[0], "systemctl daemon-reload");
    }
}
