use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use vpn_filter::daemon::{
    lifecycle::Reloader,
    run::{run, Reload, RunArgs},
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
    /// Run the real program over a pcap/pcapng capture, offline (loaded, never attached),
    /// and report per-protocol, per-verdict and per-flow results.
    Replay(vpn_filter::cli::replay::ReplayArgs),
    /// Registry feed tools.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Known VPN endpoint lists: validate a feed, convert a provider's server list.
    #[command(subcommand)]
    Endpoints(EndpointsCommand),
    /// Is ADDRESS allowed, and by which registry entry: in the running filter (its pinned
    /// allowlist and last applied feed) and in a given feed. Exit 0: allowed everywhere
    /// consulted; 1: not allowed somewhere; 2: error.
    Check(vpn_filter::cli::registry::CheckArgs),
    /// Summary of the running filter: interfaces, program, registry, counters since start.
    Status(vpn_filter::daemon::observe::control::cli::StatusArgs),
    /// Print the running filter's recent drop events; with --follow, stream new ones.
    Events(vpn_filter::daemon::observe::control::cli::EventsArgs),
    /// Live view of drop rates per protocol and the top blocked sources (q to quit).
    Top(vpn_filter::cli::top::TopArgs),
    /// Remove the filter: detach from an interface, or (without --iface) from every interface
    /// and delete all its pins. Refused while a controller runs (stop it first).
    Detach(DetachArgs),
}

#[derive(Debug, clap::Args)]
struct DetachArgs {
    /// Only this interface (its link); the maps stay for the other interfaces.
    #[arg(long)]
    iface: Option<String>,
    /// bpffs directory the controller pinned into.
    #[arg(long, default_value = vpn_filter::kernel::pin::DEFAULT_PIN_ROOT, value_name = "DIR")]
    bpffs_dir: std::path::PathBuf,
    /// Lock file of the controller (default: derived from --bpffs-dir, as `run` does).
    #[arg(long, value_name = "PATH")]
    lock_file: Option<std::path::PathBuf>,
}

fn detach(args: DetachArgs) -> anyhow::Result<()> {
    let pins = vpn_filter::kernel::pin::PinDir::new(&args.bpffs_dir);
    let lock = args
        .lock_file
        .unwrap_or_else(|| vpn_filter::kernel::pin::default_lock_path(&args.bpffs_dir));
    let report = vpn_filter::kernel::pin::detach(&pins, args.iface.as_deref(), &lock)?;
    if report.links.is_empty() {
        println!(
            "no vpn-filter link was pinned under {}",
            pins.links_dir().display()
        );
    }
    for i in &report.links {
        println!("detached from {i}");
    }
    if report.maps_removed {
        println!("removed every pin under {}", args.bpffs_dir.display());
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
enum RegistryCommand {
    /// Check a feed file (JSON or CSV); prints every problem with its entry id and field (or
    /// line and column), exits 1 if any.
    Validate(vpn_filter::cli::registry::ValidateArgs),
    /// Write a new Ed25519 key pair for signing feeds: the private key (PEM PKCS#8, mode
    /// 0600) and the public key (PEM, the format `run --registry-pubkey` reads).
    Keygen(vpn_filter::registry::publish::KeygenArgs),
    /// Publish the registry (a CSV export or a JSON feed) for gateways to poll: writes the
    /// canonical feed with a raised serial and generated_at, and its signature, into a new
    /// release directory of OUT, then switches OUT/current to it atomically. Refuses input
    /// that `registry validate` refuses; prints the entries added, removed and changed.
    Publish(vpn_filter::registry::publish::PublishArgs),
}

#[derive(Debug, Subcommand)]
enum EndpointsCommand {
    /// Check an endpoint feed (plain-text CIDR list or JSON); prints every problem with its
    /// line or entry and field, exits 1 if any.
    Validate(vpn_filter::cli::endpoints::ValidateArgs),
    /// Convert a provider's published server list (Tor Onionoo or consensus, Mullvad, NordVPN,
    /// Proton) to an endpoint list on stdout.
    Import(vpn_filter::cli::endpoints::ImportArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Run(args) => {
            // With --config, the file fills what the command line did not set; SIGHUP re-reads it.
            let run_matches = matches
                .subcommand_matches("run")
                .cloned()
                .expect("the run subcommand");
            let settings = match &args.config {
                Some(path) => {
                    let reloader = Reloader {
                        matches: run_matches,
                        path: path.clone(),
                    };
                    reloader.load(&args).map(|merged| {
                        (
                            merged,
                            Some(Reload {
                                reloader,
                                cli: args.clone(),
                            }),
                        )
                    })
                }
                None => Ok((args, None)),
            };
            settings.and_then(|(args, reload)| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| rt.block_on(run(args, reload)))
            })
        }
        Command::Detach(args) => detach(args),
        Command::Replay(args) => vpn_filter::cli::replay::main(args),
        Command::Status(args) => vpn_filter::daemon::observe::control::cli::status(args),
        Command::Events(args) => vpn_filter::daemon::observe::control::cli::events(args),
        Command::Top(args) => vpn_filter::cli::top::run(args),
        Command::Registry(RegistryCommand::Validate(args)) => {
            vpn_filter::cli::registry::validate(args)
        }
        Command::Endpoints(EndpointsCommand::Validate(args)) => {
            vpn_filter::cli::endpoints::validate(args)
        }
        Command::Endpoints(EndpointsCommand::Import(args)) => {
            vpn_filter::cli::endpoints::import_cmd(args)
        }
        Command::Registry(RegistryCommand::Keygen(args)) => {
            vpn_filter::registry::publish::keygen(args)
        }
        Command::Registry(RegistryCommand::Publish(args)) => {
            vpn_filter::registry::publish::publish(args)
        }
        Command::Check(args) => return vpn_filter::cli::registry::check(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
