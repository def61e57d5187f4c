//! vpn-filter controller library: loading the XDP program, the registry feed, the allowlist
//! sync and the event stream. The `vpn-filter` binary is a thin CLI over it; the integration
//! tests drive it directly.

pub mod cli;
pub mod client;
pub mod daemon;
pub mod domains;
pub mod endpoints;
pub mod kernel;
pub mod registry;
pub mod replay;
