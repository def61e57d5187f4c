//! The long-running controller (`vpn-filter run`): start-up, configuration and reload,
//! privileges, status, and what it shows the operator (events, control socket, metrics).

pub mod config;
pub mod lifecycle;
pub mod observe;
pub mod privs;
pub mod run;
pub mod status;
