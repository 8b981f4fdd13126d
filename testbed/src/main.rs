//! `airgap-testbed`: the test rig as a command, for scripts and benchmarks.
//! Parses arguments and hands over to [`airgap_testbed::serve`].

use airgap_testbed::serve::{self, TestbedOptions};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "airgap-testbed",
    version,
    about = "Local registry and k3s release server for airgap tests"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a seeded registry and release server, write DIR/testbed.env,
    /// print it as JSON, and run until SIGTERM/SIGINT or end of stdin.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Directory for the registry storage, the release and testbed.env.
    #[arg(long)]
    dir: PathBuf,
    /// Also seed the benchmark images with at least this many layer bytes
    /// (K, M, G suffixes allowed).
    #[arg(long, value_parser = bench_bytes)]
    bench_bytes: Option<u64>,
    /// File to serve as the amd64 k3s asset (default: a stand-in script).
    #[arg(long)]
    k3s: Option<PathBuf>,
    /// Also run a private containerd (CONTAINERD_SOCKET in testbed.env).
    #[arg(long)]
    containerd: bool,
}

fn bench_bytes(text: &str) -> Result<u64, String> {
    serve::parse_size(text).map_err(|e| format!("{e:#}"))
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve(args) => serve::run(&TestbedOptions {
            dir: args.dir,
            bench_bytes: args.bench_bytes,
            k3s: args.k3s,
            containerd: args.containerd,
        }),
    };
    if let Err(e) = result {
        eprintln!("airgap-testbed: error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "airgap-testbed",
            "serve",
            "--dir",
            "/x",
            "--bench-bytes",
            "8M",
        ])
        .unwrap();
        let Cmd::Serve(args) = cli.cmd;
        assert_eq!(args.bench_bytes, Some(8 << 20));
    }
}
