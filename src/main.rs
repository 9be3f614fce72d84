//! The `cairn` binary: parse the command line, run the command, turn its
//! failure into one line on stderr and an exit code.

use std::process::ExitCode;

use clap::Parser;

use cairn::commands::{Cli, Command};
use cairn::error::exit;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    cairn::logging::init(cli.global.verbose);
    let result = match cli.command {
        Command::Init(cmd) => cmd.execute(),
        Command::Up(cmd) => cmd.execute(&cli.global),
        Command::Token(cmd) => cmd.execute(&cli.global),
        Command::Status(cmd) => cmd.execute(&cli.global),
        Command::Validate(cmd) => cmd.execute(),
        Command::Doctor(cmd) => cmd.execute(&cli.global),
        Command::Logs(cmd) => cmd.execute(&cli.global),
        Command::Run(cmd) => cmd.execute(&cli.global),
        Command::Log(cmd) => cmd.execute(&cli.global),
        Command::Diff(cmd) => cmd.execute(&cli.global),
        Command::Rollback(cmd) => cmd.execute(&cli.global),
        Command::Gc(cmd) => cmd.execute(&cli.global),
        Command::Push(cmd) => cmd.execute(&cli.global),
        Command::Pull(cmd) => cmd.execute(&cli.global),
        Command::Images(cmd) => cmd.execute(&cli.global),
        Command::Sidecar(cmd) => cmd.execute(&cli.global),
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(failure) => {
            eprintln!("cairn: {}", failure.one_line());
            ExitCode::from(failure.exit_code())
        }
    }
}

/// Help and version print as clap renders them; a real mistake is one line.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(exit::OK);
    }
    let rendered = e.render().to_string();
    let line = rendered
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("invalid arguments");
    let line = line.strip_prefix("error: ").unwrap_or(line);
    eprintln!("cairn: {line} (see `cairn --help`)");
    ExitCode::from(exit::USAGE)
}
