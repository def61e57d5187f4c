use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use vpn_filter::{
    registry::{Feed, ValidateOptions},
    run::{run, RunArgs},
};

/// Enforce a registered-VPN policy at line rate: VPN handshakes from or to registered
/// addresses pass; all other VPN traffic is dropped in XDP and reported.
#[derive(Debug, Parser)]
#[command(name = "vpn-filter", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load and attach the filter, keep the allowlist in sync with the registry, and write
    /// drop events as JSON lines to stdout until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Registry feed tools.
    #[command(subcommand)]
    Registry(RegistryCommand),
}

#[derive(Debug, Subcommand)]
enum RegistryCommand {
    /// Check a feed file; prints every problem with its entry id and field, exits 1 if any.
    Validate {
        /// The JSON feed file.
        file: PathBuf,
        /// Accept prefixes broader than /8 (IPv4) or /16 (IPv6).
        #[arg(long)]
        allow_broad: bool,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(run(args))),
        Command::Registry(RegistryCommand::Validate { file, allow_broad }) => {
            match Feed::from_file(&file, ValidateOptions { allow_broad }) {
                Ok((feed, warnings)) => {
                    for w in &warnings {
                        eprintln!("warning: {w}");
                    }
                    let now = time::OffsetDateTime::now_utc();
                    let allow = feed.allowlist(now);
                    println!(
                        "{}: valid: serial {}, {} entries, {} in force now, {} IPv4 and {} IPv6 prefixes allowed",
                        file.display(),
                        feed.serial,
                        feed.entries.len(),
                        feed.entries.iter().filter(|e| e.in_force(now)).count(),
                        allow.v4_count(),
                        allow.v6_count()
                    );
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
