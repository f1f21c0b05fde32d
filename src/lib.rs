//! fifod: a daemon that creates named pipes safely and relays bytes between them.
//!
//! The binary is a thin wrapper around [`cli::main`]; see ARCHITECTURE.md for
//! how the modules fit together.

pub mod config;
pub mod units;
