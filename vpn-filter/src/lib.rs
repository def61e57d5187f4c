//! vpn-filter controller library: loading the XDP program, the registry feed, the allowlist
//! sync and the event stream. The `vpn-filter` binary is a thin CLI over it; the integration
//! tests drive it directly.

pub mod config;
pub mod control;
pub mod endpoints;
pub mod events;
pub mod fastpath;
pub mod filter;
pub mod lifecycle;
pub mod metrics;
pub mod observe;
pub mod pin;
pub mod privs;
pub mod publish;
pub mod registry;
pub mod registry_cli;
pub mod replay;
pub mod run;
pub mod source;
pub mod status;
pub mod sync;
pub mod top;
