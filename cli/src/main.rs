//! `handles`: Zircon-style handle tables for Linux processes.
//!
//! The binary parses arguments, calls the library and renders; the logic
//! lives in `handles-supervisor`. Exit codes are documented in `exit.rs`
//! and in the README.

mod args;
mod exit;
mod filter;
mod render;
mod show;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    ExitCode::from(show::run(&cli.show))
}
