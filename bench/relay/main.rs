//! Benchmark harness for fifod: every workload runs against fifod and the
//! usual alternatives (socat, cat, coreutils tee, shell pipelines, a bare
//! FIFO) in the same run, several times, and prints medians and ratios.
//!
//! Run it with `cargo bench --bench relay` (see BENCHMARKS.md). All traffic
//! goes through real FIFOs in a private temporary directory; the writers and
//! readers are threads of this program. Every wait has a deadline: a
//! watchdog kills every process this program started, removes the temporary
//! directory and exits if a run overstays, or on SIGINT/SIGTERM.
//!
//! Environment:
//! - `FIFOD_BIN`: the fifod binary (default: the one cargo built for this
//!   bench, i.e. `target/release/fifod` under the repository, or under
//!   `$CARGO_TARGET_DIR`).
//! - `BENCH_RUNS`: repetitions of every measurement (default 5).
//! - `BENCH_QUICK=1`: a smoke run (sizes / 32, 1 repetition, 1 s idle).
//! - `BENCH_IDLE_SECS`: idle period of the scale workload (default 10).
//! - `SOCAT`: the socat binary (default `socat` on PATH).
//! - `BENCH_CPUS`: `both` (default: every workload with the CPUs left to the
//!   scheduler, then with everything pinned to one CPU), `all` or `one`.
//! - `BENCH_SCALE_PAIRS`: input/output pairs of the scale workload (1000).
//! - `BENCH_RELOAD_FIFOS`: FIFO counts of the reload workload
//!   (`1000,3000,9000`).
//! - `BENCH_CONTROL_PAIRS`: idle routes beside the ping-pong of the control
//!   workload (200).
//! - `BENCH_TMPDIR`: where the temporary directory goes (default `/dev/shm`,
//!   a tmpfs like fifod's usual `/run`, else `$TMPDIR` or `/tmp`).
//!
//! Arguments (after `--`): workloads to run, by id or name (`w1`
//! `throughput`, `w2` `fan-out`, `w3` `lines`, `w4` `latency`, `w5` `scale`,
//! `w6` `cat`, `w7` `reload`, `w8` `control`), default all. Without
//! `--bench` (which `cargo bench` passes) it does nothing, so that
//! `cargo test --all-targets` does not start it.
//!
//! Layout: `harness` (options, repetition of disturbed runs, CPU modes),
//! `watchdog` (deadlines and cleanup), `sys` (system helpers), `procs`
//! (child processes), `traffic` (writer and reader threads), `report`
//! (tables, ratios, targets), `fifod` (its config and launch), `competitors`
//! (the other relays and the transfer runner), `reference` (the minimal
//! splice/tee relay of the physical-limit rows), `workloads` (one module per
//! workload).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Instant;

mod competitors;
mod fifod;
mod harness;
mod procs;
mod reference;
mod report;
mod sys;
mod traffic;
mod watchdog;
mod workloads;

use harness::{KEPT_NOISY, RETRIED, cpu_modes, opts};
use report::{Report, machine, targets};
use sys::{affinity, raise_nofile, set_affinity};
use watchdog::{cleanup_all, clear_deadline, start_watchdog};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == reference::FLAG) {
        reference::main(&args[2..]);
    }
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // binary without it, and must not start a ten-minute benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("relay: not run as a benchmark; use `cargo bench --bench relay`");
        return;
    }
    raise_nofile();
    start_watchdog();
    let o = match opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e}");
            cleanup_all();
            std::process::exit(2);
        }
    };
    eprintln!(
        "fifod: {}\nruns: {}{}\ntemp: {}",
        o.fifod.display(),
        o.runs,
        if o.quick { " (QUICK: sizes / 32)" } else { "" },
        o.tmp.display()
    );
    let started = Instant::now();
    let mut r = Report::default();
    let _ = writeln!(
        r.text,
        "## Results ({} runs per measurement{})",
        o.runs,
        if o.quick { ", QUICK sizes" } else { "" }
    );
    let _ = writeln!(r.text, "\n{}", machine(&o.fifod));
    let mut failed = false;
    let original = affinity();
    // Whether no CPU mode ran yet.
    let mut first = true;
    for (mode, cpus) in cpu_modes(&original) {
        let chosen: Vec<_> = workloads::ALL
            .iter()
            .filter(|w| o.wants(w.id, w.name) && (first || !w.first_mode_only))
            .collect();
        if chosen.is_empty() {
            continue;
        }
        if set_affinity(&cpus).is_err() {
            eprintln!("bench: cannot set the CPU affinity for {mode}; skipped");
            continue;
        }
        eprintln!("\n######## {mode}");
        let _ = writeln!(r.text, "\n## {mode}");
        r.prefix = format!("{mode}:");
        first = false;
        for w in chosen {
            if let Err(e) = (w.run)(&o, &mut r) {
                eprintln!("bench: {e}");
                let _ = writeln!(r.text, "\n**{} FAILED:** {e}", w.id);
                failed = true;
                clear_deadline();
            }
        }
        targets(&mut r);
    }
    let _ = set_affinity(&original);
    let _ = writeln!(
        r.text,
        "\nRuns repeated because other processes used over 10 % of a CPU meanwhile: {}; \
         kept after 3 repeats anyway: {}.",
        RETRIED.load(Ordering::SeqCst),
        KEPT_NOISY.load(Ordering::SeqCst)
    );
    let _ = writeln!(
        r.text,
        "\nTotal bench time: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    println!("{}", r.text);
    cleanup_all();
    if failed {
        std::process::exit(1);
    }
}
