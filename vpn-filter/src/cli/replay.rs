//! `vpn-filter replay` command line.

use std::{io::IsTerminal as _, path::PathBuf};

use anyhow::{Context as _, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::{
    kernel::Policy,
    registry::{Allowlist, Feed, ValidateOptions},
    replay::{
        replay,
        report::{self, Context as ReportContext, DiffSide},
        ReplayError, ReplaySettings, Timeouts,
    },
};

/// Captures at least this large get a progress bar (when stderr is a terminal).
const PROGRESS_MIN_BYTES: u64 = 4 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned tables for people.
    Table,
    /// JSON lines: one record per flow, then a summary (fields: docs/replay.md).
    Json,
}

// NOTE: a `--config FILE` (issue 6) will supply the policy and timeouts; until then they come
// from the same flags as `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// The capture to replay (pcap or pcapng; Ethernet, Linux cooked SLL/SLL2 or raw IP).
    #[arg(long, value_name = "FILE")]
    pub pcap: PathBuf,
    /// Registry feed listing registered VPN addresses (entries in force now). Without it
    /// nothing is registered.
    #[arg(long, value_name = "FEED")]
    pub registry: Option<PathBuf>,
    #[command(flatten)]
    pub endpoints: crate::endpoints::EndpointArgs,
    /// VPN domains of the `tls_sni` rule, as for `run` (default: the built-in list).
    #[arg(long, value_name = "FILE")]
    pub vpn_domains: Option<PathBuf>,
    /// Per-protocol policy override, PROTOCOL=enforce|monitor|off (repeatable; PROTOCOL may
    /// be `all`), as for `run`. Default: enforce for all, except endpoints=monitor.
    #[arg(long = "policy", value_name = "PROTOCOL=MODE")]
    pub policy: Vec<String>,
    /// Accept registry prefixes broader than /8 (IPv4) or /16 (IPv6).
    #[arg(long)]
    pub allow_broad: bool,
    /// Output: tables, or JSON lines (one record per flow).
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
    /// Also list every dropped packet with its message and reason.
    #[arg(long)]
    pub show_dropped: bool,
    /// Replay again with this registry (a fresh program, so no flow state carries over) and
    /// report the flows whose verdict changes.
    #[arg(long, value_name = "FEED2")]
    pub diff: Option<PathBuf>,
    /// Policy overrides for the second replay (repeatable; applied on top of --policy).
    /// Implies a second replay, with --diff's registry or the same one.
    #[arg(long = "diff-policy", value_name = "PROTOCOL=MODE")]
    pub diff_policy: Vec<String>,
    /// Capacity of the flow-state LRU map.
    #[arg(long, default_value_t = vpn_filter_common::DEFAULT_FLOW_ENTRIES)]
    pub flow_entries: u32,
    /// Seconds a flow judged an unregistered VPN keeps being dropped after its last packet
    /// (on the capture's clock).
    #[arg(long, default_value_t = vpn_filter_common::DEFAULT_BLOCKED_FLOW_TIMEOUT_NS / 1_000_000_000)]
    pub blocked_flow_timeout: u64,
}

fn policy(base: Policy, specs: &[String]) -> Result<Policy> {
    let mut policy = base;
    for spec in specs {
        policy.apply_override(spec)?;
    }
    Ok(policy)
}

fn registry(path: Option<&PathBuf>, allow_broad: bool) -> Result<(Allowlist, String)> {
    let Some(path) = path else {
        return Ok((
            Allowlist::default(),
            "none (no address is registered)".to_string(),
        ));
    };
    let (feed, warnings) = Feed::from_file(path, ValidateOptions { allow_broad })?;
    for w in &warnings {
        log::warn!("{}: {w}", path.display());
    }
    let allow = feed.allowlist(time::OffsetDateTime::now_utc());
    let description = format!(
        "{} ({} {}; {} IPv4 and {} IPv6 prefixes in force now)",
        path.display(),
        feed.entries.len(),
        if feed.entries.len() == 1 {
            "entry"
        } else {
            "entries"
        },
        allow.v4_count(),
        allow.v6_count()
    );
    Ok((allow, description))
}

fn progress_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() || len < PROGRESS_MIN_BYTES {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) = ProgressStyle::with_template(
        "replaying {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    bar
}

fn run_one(
    settings: &ReplaySettings,
    args: &ReplayArgs,
) -> Result<crate::replay::Replay, ReplayError> {
    let len = std::fs::metadata(&args.pcap).map(|m| m.len()).unwrap_or(0);
    let bar = progress_bar(len);
    let result = replay(&args.pcap, settings, &mut |pos, _| bar.set_position(pos));
    bar.finish_and_clear();
    result
}

/// Runs `vpn-filter replay`.
pub fn main(args: ReplayArgs) -> Result<()> {
    let base = policy(Policy::default(), &args.policy)?;
    let (allowlist, mut registry_text) = registry(args.registry.as_ref(), args.allow_broad)?;
    let endpoints = match args.endpoints.load_file()? {
        Some((feed, warnings)) => {
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            registry_text.push_str(&format!(
                "; endpoints {} ({})",
                args.endpoints.endpoints.as_deref().unwrap_or("?"),
                feed.describe()
            ));
            crate::endpoints::set_provider_names_for_replay(&feed.set.providers);
            feed.set
        }
        None => Default::default(),
    };
    let timeouts = Timeouts {
        blocked_ns: args.blocked_flow_timeout.saturating_mul(1_000_000_000),
        ..Timeouts::default()
    };
    let vpn_domains = crate::domains::DomainSource::new(args.vpn_domains.as_deref()).load()?;
    let settings = ReplaySettings {
        policy: base,
        allowlist,
        endpoints,
        vpn_domains,
        flow_entries: args.flow_entries,
        timeouts,
        keep_dropped: args.show_dropped,
    };
    // Check the second side's inputs before the first replay runs.
    let second = if args.diff.is_some() || !args.diff_policy.is_empty() {
        let p = policy(base, &args.diff_policy)?;
        let (allow, text) = match &args.diff {
            Some(path) => registry(Some(path), args.allow_broad)?,
            None => (settings.allowlist.clone(), registry_text.clone()),
        };
        Some((
            ReplaySettings {
                policy: p,
                allowlist: allow,
                keep_dropped: false,
                ..settings.clone()
            },
            text,
        ))
    } else {
        None
    };

    let mut ctx = ReportContext {
        registry: registry_text,
        policy: crate::replay::describe_policy(&base),
        show_dropped: args.show_dropped,
        error: None,
    };
    let mut stdout = std::io::stdout().lock();
    let first = match run_one(&settings, &args) {
        Ok(r) => r,
        Err(ReplayError::Capture { error, partial }) => {
            // What was read is still worth seeing; the error also goes to stderr.
            ctx.error = Some(error.to_string());
            print(&mut stdout, args.format, &ctx, &partial, None)?;
            return Err(ReplayError::Capture { error, partial }.into());
        }
        Err(e) => return Err(e.into()),
    };
    let other = match &second {
        Some((s, text)) => {
            let r = run_one(s, &args).context("the second replay (--diff)")?;
            Some((r, text.clone(), crate::replay::describe_policy(&s.policy)))
        }
        None => None,
    };
    let diff = other.as_ref().map(|(r, registry, policy)| DiffSide {
        replay: r,
        registry: registry.as_str(),
        policy: policy.as_str(),
    });
    print(&mut stdout, args.format, &ctx, &first, diff.as_ref())
}

fn print(
    out: &mut impl std::io::Write,
    format: OutputFormat,
    ctx: &ReportContext,
    replay: &crate::replay::Replay,
    diff: Option<&DiffSide<'_>>,
) -> Result<()> {
    let written = match format {
        OutputFormat::Table => report::table(out, ctx, replay, diff),
        OutputFormat::Json => report::json_lines(out, ctx, replay, diff),
    }
    .and_then(|()| out.flush());
    match written {
        // The reader (`| head`) has seen enough.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing the report"),
    }
}
