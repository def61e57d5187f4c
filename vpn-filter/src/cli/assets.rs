//! `vpn-filter generate-assets --out DIR` (hidden): the shell completions (clap_complete) and
//! the man pages (clap_mangen) for this command line, for `cargo xtask dist` and the .deb.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;
use clap_complete::Shell;

use super::Cli;

#[derive(Debug, clap::Args)]
pub struct AssetsArgs {
    /// Directory to write `completions/` and `man/` into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Writes `completions/{vpn-filter.bash,_vpn-filter,vpn-filter.fish}` and
/// `man/vpn-filter*.1` (one page per subcommand) under `args.out`.
pub fn generate(args: AssetsArgs) -> Result<()> {
    let completions = args.out.join("completions");
    let man = args.out.join("man");
    for dir in [&completions, &man] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path =
            clap_complete::generate_to(shell, &mut Cli::command(), "vpn-filter", &completions)
                .with_context(|| format!("writing the {shell} completions"))?;
        println!("{}", path.display());
    }
    clap_mangen::generate_to(Cli::command(), &man)
        .with_context(|| format!("writing the man pages into {}", man.display()))?;
    for page in std::fs::read_dir(&man)? {
        println!("{}", page?.path().display());
    }
    Ok(())
}
