//! `vpn-filter detach`: remove the filter from one interface or from all of them.

#[derive(Debug, clap::Args)]
pub struct DetachArgs {
    /// Only this interface (its link); the maps stay while another interface is attached
    /// (detaching the last one removes them too).
    #[arg(long)]
    pub iface: Option<String>,
    /// bpffs directory the controller pinned into.
    #[arg(long, default_value = crate::kernel::pin::DEFAULT_PIN_ROOT, value_name = "DIR")]
    pub bpffs_dir: std::path::PathBuf,
    /// Lock file of the controller (default: derived from --bpffs-dir, as `run` does).
    #[arg(long, value_name = "PATH")]
    pub lock_file: Option<std::path::PathBuf>,
}

pub fn detach(args: DetachArgs) -> anyhow::Result<()> {
    let pins = crate::kernel::pin::PinDir::new(&args.bpffs_dir);
    let lock = args
        .lock_file
        .unwrap_or_else(|| crate::kernel::pin::default_lock_path(&args.bpffs_dir));
    let report = crate::kernel::pin::detach(&pins, args.iface.as_deref(), &lock)?;
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
