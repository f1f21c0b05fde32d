//! Integration tests for `fifod`: each test runs the real binary in its own
//! temporary directory.
#![allow(clippy::unwrap_used)]

mod common;

mod activation;
mod cli;
mod config_errors;
mod crash;
mod faults;
mod fragments;
mod framing;
mod hardening;
mod hostile_fs;
mod injected;
mod lifecycle;
mod mqtt;
mod processes;
mod real_systemd;
mod relay;
mod reload;
mod reload_chaos;
mod shutdown;
mod shutdown_order;
mod status;
mod systemd;
mod zero_copy;
