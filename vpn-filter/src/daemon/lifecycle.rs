//! How the controller lives on a gateway: pins that outlive it, one controller at a time,
//! re-attaching to interfaces that come back, least privilege, and reloading its
//! configuration on SIGHUP.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::ArgMatches;

use crate::kernel::pin::{default_lock_path, PinDir, DEFAULT_PIN_ROOT};

#[derive(Debug, Clone, clap::Args, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LifecycleArgs {
    /// bpffs directory for the pinned program links and maps. The filter keeps enforcing
    /// from there when the controller stops or is killed; a restarted controller adopts it.
    #[arg(long, default_value = DEFAULT_PIN_ROOT, value_name = "DIR")]
    pub bpffs_dir: PathBuf,
    /// Do not pin: the filter lives only as long as this process (labs, tests).
    #[arg(long)]
    pub no_pin: bool,
    /// On SIGTERM/SIGINT, detach from every interface and remove the pins (default: keep
    /// enforcing).
    #[arg(long)]
    pub detach_on_exit: bool,
    /// Lock file that keeps a second controller from managing the same pins (default:
    /// /run/vpn-filter/<bpffs-dir>.lock).
    #[arg(long, value_name = "PATH")]
    pub lock_file: Option<PathBuf>,
    /// How often attachments are checked; an interface that disappeared and came back is
    /// re-attached within this interval.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub reattach_interval_ms: u64,
    /// After start-up, switch to this user, keeping only CAP_BPF, CAP_NET_ADMIN and
    /// CAP_PERFMON. Without it the controller stays uid 0 but still drops every other
    /// capability.
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
    /// Keep every capability (debugging only).
    #[arg(long)]
    pub keep_privileges: bool,
}

impl LifecycleArgs {
    pub fn pins(&self) -> Option<PinDir> {
        (!self.no_pin).then(|| PinDir::new(&self.bpffs_dir))
    }

    pub fn lock_path(&self) -> PathBuf {
        self.lock_file
            .clone()
            .unwrap_or_else(|| default_lock_path(&self.bpffs_dir))
    }
}

/// Re-reads `--config` on SIGHUP, applying it under the same command line.
#[derive(Clone, Debug)]
pub struct Reloader {
    pub matches: ArgMatches,
    pub path: PathBuf,
}

impl Reloader {
    /// The settings from the command line and the config file as they are now.
    pub fn load<T: serde::Serialize + serde::de::DeserializeOwned>(&self, cli: &T) -> Result<T> {
        crate::daemon::config::merge(cli, &self.matches, &self.path)
            .with_context(|| format!("config {}", self.path.display()))
    }
}
