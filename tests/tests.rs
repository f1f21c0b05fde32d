//! Integration tests for `fifod`: each test runs the real binary in its own
//! temporary directory.
#![allow(clippy::unwrap_used)]

mod common;

mod cli;
mod config_errors;
mod framing;
mod hardening;
mod lifecycle;
mod processes;
mod relay;
mod shutdown;
mod shutdown_order;
mod status;
