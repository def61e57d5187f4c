//! The command line: [`Cli`] and one file per subcommand. `main.rs` only calls [`main`].

pub mod assets;
pub mod detach;
pub mod endpoints;
pub mod events;
pub mod registry;
pub mod replay;
pub mod run;
pub mod status;
pub mod top;

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::daemon::run::RunArgs;

/// Enforce a registered-VPN policy at line rate: VPN handshakes from or to registered
/// addresses pass; all other VPN traffic is dropped in XDP and reported.
#[derive(Debug, Parser)]
#[command(name = "vpn-filter", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and attach the filter, keep the allowlist in sync with the registry, and write
    /// drop events as JSON lines to stdout until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Run the real program over a pcap/pcapng capture, offline (loaded, never attached),
    /// and report per-protocol, per-verdict and per-flow results.
    Replay(replay::ReplayArgs),
    /// Registry feed tools.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Known VPN endpoint lists: validate a feed, convert a provider's server list.
    #[command(subcommand)]
    Endpoints(EndpointsCommand),
    /// Is ADDRESS allowed, and by which registry entry: in the running filter (its pinned
    /// allowlist and last applied feed) and in a given feed. Exit 0: allowed everywhere
    /// consulted; 1: not allowed somewhere; 2: error.
    Check(registry::CheckArgs),
    /// Summary of the running filter: interfaces, program, registry, counters since start.
    Status(status::StatusArgs),
    /// Print the running filter's recent drop events; with --follow, stream new ones.
    Events(events::EventsArgs),
    /// Live view of drop rates per protocol and the top blocked sources (q to quit).
    Top(top::TopArgs),
    /// Remove the filter: detach from an interface, or (without --iface) from every interface;
    /// with the last interface, all its pins go too. Refused while a controller runs (stop it
    /// first).
    Detach(detach::DetachArgs),
    /// Write the shell completions and man pages (for packaging).
    #[command(hide = true)]
    GenerateAssets(assets::AssetsArgs),
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Check a feed file (JSON or CSV); prints every problem with its entry id and field (or
    /// line and column), exits 1 if any.
    Validate(registry::ValidateArgs),
    /// Write a new Ed25519 key pair for signing feeds: the private key (PEM PKCS#8, mode
    /// 0600) and the public key (PEM, the format `run --registry-pubkey` reads).
    Keygen(crate::registry::publish::KeygenArgs),
    /// Publish the registry (a CSV export or a JSON feed) for gateways to poll: writes the
    /// canonical feed with a raised serial and generated_at, and its signature, into a new
    /// release directory of OUT, then switches OUT/current to it atomically. Refuses input
    /// that `registry validate` refuses; prints the entries added, removed and changed.
    Publish(crate::registry::publish::PublishArgs),
}

#[derive(Debug, Subcommand)]
pub enum EndpointsCommand {
    /// Check an endpoint feed (plain-text CIDR list or JSON); prints every problem with its
    /// line or entry and field, exits 1 if any.
    Validate(endpoints::ValidateArgs),
    /// Convert a provider's published server list (Tor Onionoo or consensus, Mullvad, NordVPN,
    /// Proton) to an endpoint list on stdout.
    Import(endpoints::ImportArgs),
}

/// Parses the command line and runs the subcommand; the exit code of the process.
pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Run(args) => run::run(args, &matches),
        Command::Detach(args) => detach::detach(args),
        Command::GenerateAssets(args) => assets::generate(args),
        Command::Replay(args) => replay::main(args),
        Command::Status(args) => status::status(args),
        Command::Events(args) => events::events(args),
        Command::Top(args) => top::run(args),
        Command::Registry(RegistryCommand::Validate(args)) => registry::validate(args),
        Command::Endpoints(EndpointsCommand::Validate(args)) => endpoints::validate(args),
        Command::Endpoints(EndpointsCommand::Import(args)) => endpoints::import_cmd(args),
        Command::Registry(RegistryCommand::Keygen(args)) => crate::registry::publish::keygen(args),
        Command::Registry(RegistryCommand::Publish(args)) => {
            crate::registry::publish::publish(args)
        }
        Command::Check(args) => return registry::check(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
