//! `handles`: Zircon-style handle tables for Linux processes.
//!
//! The binary parses arguments, calls the library and renders; the logic
//! lives in `handles-supervisor`. Exit codes are documented in `exit.rs`
//! and in the README.

mod all;
mod args;
mod attach;
mod exit;
mod filter;
mod graph;
mod pytest;
mod render;
mod run;
mod shim;
mod show;
mod symbolize;
mod watch;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let code = match &cli.command {
        Some(args::Command::Run(a)) => run::run(a),
        Some(args::Command::Symbolize { pid }) => symbolize::run(*pid),
        Some(args::Command::Graph(a)) => graph::run(a),
        Some(args::Command::Watch(a)) => watch::run(a),
        Some(args::Command::Attach(a)) => attach::run(a),
        None if cli.show.all => all::run(&cli.show),
        None => show::run(&cli.show),
    };
    ExitCode::from(code)
}
