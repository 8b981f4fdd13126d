//! One thin function per subcommand: turn the parsed arguments into a
//! library call and print its result. Results go to stdout (text, or JSON
//! with `--json`); notes for the operator, progress and logs go to stderr.
//! This is where the process's one tokio runtime is made: library calls
//! that need async clients take its `Handle` (the project's async rule).

mod build;
mod bundle;
mod install;
mod keygen;
mod node;

use crate::cli::{BundleCommand, Command};
use tokio::runtime::Handle;

/// Runs one parsed command.
pub fn run(command: Command) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let handle = runtime.handle();
    dispatch(command, handle)
}

fn dispatch(command: Command, handle: &Handle) -> anyhow::Result<()> {
    match command {
        Command::Keygen(args) => keygen::keygen(args),
        Command::Bundle(BundleCommand::Build(args)) => build::build(*args, handle),
        Command::Bundle(BundleCommand::Lock(args)) => build::lock(*args, handle),
        Command::Bundle(BundleCommand::Lint(args)) => build::lint(args),
        Command::Bundle(BundleCommand::Export(args)) => bundle::export(args),
        Command::Bundle(BundleCommand::Verify(args)) => bundle::verify(args),
        Command::Bundle(BundleCommand::Inspect(args)) => bundle::inspect(args),
        Command::Install(args) => install::install(*args, handle),
        Command::Token(args) => node::token(args),
        Command::Status(args) => node::status(args, handle),
        Command::Uninstall(args) => node::uninstall(args, handle),
    }
}

/// Prints a command's result on stdout: as text, or as JSON.
fn print_result<T: serde::Serialize + std::fmt::Display>(
    value: &T,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{value}");
    }
    Ok(())
}
