//! The named workloads. Each one runs every variant `Opts::runs` times,
//! adds its table to the report and its medians to the report's facts (which
//! `report::targets` checks). Select them by id or name after `--`:
//! `cargo bench --bench relay -- w1 latency`.

use crate::harness::{Opts, Res};
use crate::report::Report;

mod cat_pipeline;
pub mod control;
mod fan_out;
pub(crate) mod latency;
mod lines;
pub mod reload;
mod scale;
mod throughput;

pub struct Workload {
    /// The short id (`w1` …), as in the report's numbering.
    pub id: &'static str,
    /// The name, for the command line.
    pub name: &'static str,
    /// Start-up, memory and idle cost do not depend on where the CPUs are:
    /// such workloads run in the first CPU mode only.
    pub first_mode_only: bool,
    pub run: fn(&Opts, &mut Report) -> Res<()>,
}

pub const ALL: [Workload; 8] = [
    Workload {
        id: "w1",
        name: "throughput",
        first_mode_only: false,
        run: throughput::run,
    },
    Workload {
        id: "w2",
        name: "fan-out",
        first_mode_only: false,
        run: fan_out::run,
    },
    Workload {
        id: "w3",
        name: "lines",
        first_mode_only: false,
        run: lines::run,
    },
    Workload {
        id: "w4",
        name: "latency",
        first_mode_only: false,
        run: latency::run,
    },
    Workload {
        id: "w5",
        name: "scale",
        first_mode_only: true,
        run: scale::run,
    },
    Workload {
        id: "w6",
        name: "cat",
        first_mode_only: false,
        run: cat_pipeline::run,
    },
    Workload {
        id: "w7",
        name: "reload",
        first_mode_only: true,
        run: reload::run,
    },
    Workload {
        id: "w8",
        name: "control",
        first_mode_only: false,
        run: control::run,
    },
];
