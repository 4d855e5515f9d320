use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = aiot::cli::Cli::parse();
    match aiot::app::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("aiot: {error:#}");
            ExitCode::FAILURE
        }
    }
}
