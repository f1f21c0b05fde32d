//! w1, `throughput`: 1 → 1 bytes, one writer thread → relay → one reader
//! thread, against socat, cat and a bare FIFO.

use std::sync::Arc;
use std::time::Duration;

use crate::competitors::{Relay, cat, run_transfer, socat};
use crate::fifod::fifod_body;
use crate::harness::{GIB, IO_CHUNK, MIB, Opts, Res, guarded};
use crate::reference;
use crate::report::{Report, Samples, gibs, throughput_table};
use crate::traffic::pattern;
use crate::watchdog::{clear_deadline, deadline};

/// The physical-limit row.
const REFERENCE: &str = "reference splice relay";

pub fn run(o: &Opts, r: &mut Report) -> Res<()> {
    let size = o.size(4 * GIB);
    eprintln!("== 1: 1 -> 1 bytes, {} MiB", size / MIB);
    let body = |ps: &str| fifod_body(&["in", "out"], &[(&["in"], &["out"])], ps);
    let variants = [
        ("fifod", Relay::Fifod(body("")), None),
        (REFERENCE, reference::relay("in", &["out"]), None),
        (
            "fifod pipe_size=64KiB",
            Relay::Fifod(body("pipe_size = \"64KiB\"")),
            None,
        ),
        ("socat -u", socat("in", "out"), None),
        ("cat", cat("in", "out"), None),
        ("direct FIFO (no relay)", Relay::Direct, None),
        ("direct FIFO, 1 MiB pipe", Relay::Direct, Some(MIB as usize)),
    ];
    let buf = pattern(4 * IO_CHUNK);
    let (writers, readers): (Vec<_>, Vec<_>) = variants
        .iter()
        .map(|(_, v, _)| match v {
            Relay::Direct => (("in", Arc::clone(&buf), size), ("in", size)),
            _ => (("in", Arc::clone(&buf), size), ("out", size)),
        })
        .unzip();
    // The direct variants write and read the same FIFO: run them apart.
    let mut s = Samples::default();
    for rep in 0..o.runs {
        for (i, (name, relay, ps)) in variants.iter().enumerate() {
            let (m, cpu) = guarded(|| {
                deadline(Duration::from_secs(120), &format!("w1 / {name}"));
                run_transfer(
                    o,
                    relay,
                    &["in", "out"],
                    &writers[i..=i],
                    &readers[i..=i],
                    false,
                    *ps,
                )
            })
            .map_err(|e| format!("w1 / {name}: {e}"))?;
            clear_deadline();
            let g = gibs(m.bytes, m.secs);
            eprintln!(
                "  [w1 run {}/{}] {name}: {g:.2} GiB/s ({:.2} s, relay CPU {cpu:.2} s)",
                rep + 1,
                o.runs,
                m.secs
            );
            s.push(name, g);
            if !cpu.is_nan() {
                s.push_extra(name, "cpu", cpu);
            }
        }
    }
    throughput_table(
        r,
        &format!("1. 1 → 1 bytes ({} MiB)", size / MIB),
        &s,
        "fifod",
        "One writer thread (128 KiB writes) → relay → one reader thread (128 KiB reads). \
         fifod runs with its defaults (1 MiB FIFOs) and with the kernel's pipe size. \
         The direct rows are one FIFO with no relay (the floor), at the kernel's size and with \
         F_SETPIPE_SZ to 1 MiB. The reference splice relay is the physical limit: a \
         minimal relay (poll + splice, 1 MiB FIFOs, nothing else) written in the bench.",
    );
    r.fact("w1_fifod", s.med("fifod"));
    r.fact("w1_reference", s.med(REFERENCE));
    r.fact("w1_fifod_64k", s.med("fifod pipe_size=64KiB"));
    r.fact("w1_socat", s.med("socat -u"));
    r.fact("w1_cat", s.med("cat"));
    r.fact("w1_direct", s.med("direct FIFO (no relay)"));
    r.fact("w1_direct_1m", s.med("direct FIFO, 1 MiB pipe"));
    Ok(())
}
