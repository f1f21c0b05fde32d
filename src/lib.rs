//! fifod: a daemon that creates named pipes safely and relays bytes between them.
//!
//! The binary is a thin wrapper around [`cli::main`]; ARCHITECTURE.md maps
//! the modules and the invariants they keep.

pub mod activation;
pub mod child;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod event_loop;
pub mod fdstore;
pub mod fifo;
pub mod live;
pub mod notify;
pub mod pipe;
pub mod relay;
pub mod units;
pub mod watch;
