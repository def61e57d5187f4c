//! Section 3: registry sync through the controller's own `Filter::sync_allowlist`.

use std::time::Instant;

use anyhow::{Context as _, Result};
use vpn_filter::kernel::{Filter, LoadOptions, Policy};
use vpn_filter_common::Config;

use super::{
    kernel::split,
    registry::Registry,
    util::{check_stop, count, median},
};

pub struct Settings {
    pub sizes: Vec<usize>,
    /// The size the 1% change is applied to.
    pub change_size: usize,
    pub change_fraction: f64,
    pub rounds: usize,
}

#[derive(Default)]
pub struct Highlights {
    /// (prefixes, seconds) of full loads.
    pub full: Vec<(usize, f64)>,
    /// Seconds for the change.
    pub change: Option<f64>,
}

fn fresh_filter() -> Result<Filter> {
    Filter::load(
        LoadOptions::default(),
        &Policy::default(),
        &Config::default(),
    )
    .context("loading vpn-filter")
}

pub fn run(s: &Settings, out: &mut String, hl: &mut Highlights) -> Result<()> {
    out.push_str(&format!(
        "Wall time of `Filter::sync_allowlist` (the call the controller makes when a feed \
         changes), median of {} runs, each on a freshly loaded program. The allowlist is built \
         in memory beforehand (feed parsing and validation are not included).\n\n\
         | operation | prefixes (IPv4 + IPv6) | added | changed | removed | median time | runs |\n\
         |---|---|---:|---:|---:|---:|---|\n",
        s.rounds
    ));
    for &size in &s.sizes {
        check_stop()?;
        let (n4, n6) = split(size);
        let reg = Registry::generate(n4, n6, 0x5f5c + size as u64);
        let allow = reg.allowlist();
        let mut times = Vec::new();
        let mut last = Default::default();
        for _ in 0..s.rounds {
            check_stop()?;
            let mut f = fresh_filter()?;
            let t = Instant::now();
            last = f
                .sync_allowlist(&allow)
                .with_context(|| format!("full sync of {size} prefixes"))?;
            times.push(t.elapsed().as_secs_f64());
        }
        eprintln!("bench: sync, full load of {size}: {times:.3?} s");
        let med = median(times.clone());
        hl.full.push((size, med));
        out.push_str(&format!(
            "| full load into an empty map | {} ({} + {}) | {} | {} | {} | {} | {} |\n",
            count(size),
            count(n4),
            count(n6),
            count(last.added),
            count(last.changed),
            count(last.removed),
            secs(med),
            times
                .iter()
                .map(|t| secs(*t))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    check_stop()?;
    let size = s.change_size;
    let (n4, n6) = split(size);
    let reg = Registry::generate(n4, n6, 0x5f5c + size as u64);
    let changed = reg.changed(s.change_fraction, 0xc4a9);
    let (before, after) = (reg.allowlist(), changed.allowlist());
    let mut times = Vec::new();
    let mut last = Default::default();
    for _ in 0..s.rounds {
        check_stop()?;
        let mut f = fresh_filter()?;
        f.sync_allowlist(&before)
            .with_context(|| format!("full sync of {size} prefixes"))?;
        let t = Instant::now();
        last = f
            .sync_allowlist(&after)
            .context("applying the changed registry")?;
        times.push(t.elapsed().as_secs_f64());
    }
    eprintln!(
        "bench: sync, {}% change of {size}: {times:.3?} s",
        s.change_fraction * 100.0
    );
    let med = median(times.clone());
    hl.change = Some(med);
    out.push_str(&format!(
        "| {}% of the prefixes replaced (removed + as many new) | {} ({} + {}) | {} | {} | {} | {} | {} |\n\n",
        s.change_fraction * 100.0,
        count(size),
        count(n4),
        count(n6),
        count(last.added),
        count(last.changed),
        count(last.removed),
        secs(med),
        times.iter().map(|t| secs(*t)).collect::<Vec<_>>().join(", ")
    ));
    Ok(())
}

fn secs(t: f64) -> String {
    if t < 1.0 {
        format!("{:.0} ms", t * 1000.0)
    } else {
        format!("{t:.2} s")
    }
}
