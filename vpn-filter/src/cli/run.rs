//! `vpn-filter run`: the settings from the command line and `--config`, then the daemon.

use clap::ArgMatches;

use crate::daemon::{
    lifecycle::Reloader,
    run::{run as run_daemon, Reload, RunArgs},
};

/// Runs the daemon with `args` (parsed from `matches`, the whole command line).
pub fn run(args: RunArgs, matches: &ArgMatches) -> anyhow::Result<()> {
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
    settings.and_then(|(args, reload)| run_daemon(args, reload))
}
