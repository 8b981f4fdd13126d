//! The `airgap` command line: parses the arguments (`cli`), sets up logging
//! and dispatches to one thin function per subcommand (`commands`), which
//! calls the library. Errors are printed once, with their causes, and make
//! the exit status 1.
#![forbid(unsafe_code)]

mod cli;
mod commands;

use clap::Parser as _;
use std::io::IsTerminal as _;

fn main() {
    // Nothing airgap creates is writable by group or others, whatever umask
    // it was started with (a stricter one is kept): an auto-deploy
    // manifests directory anyone could write to would let them run
    // anything as cluster-admin.
    let inherited = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    rustix::process::umask(inherited | rustix::fs::Mode::from_raw_mode(0o022));
    let cli = cli::Cli::parse();
    init_logging(cli.verbose);
    if let Err(e) = commands::run(cli.command) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Logs go to stderr: warnings by default, more with -v/-vv, or as
/// `AIRGAP_LOG` filters them.
fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIRGAP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .init();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_well_formed() {
        super::cli::Cli::command().debug_assert();
    }
}
