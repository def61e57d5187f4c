//! The subcommands that are not the daemon: one file per subcommand family.

pub mod endpoints;
pub mod registry;
pub mod replay;
pub mod top;
