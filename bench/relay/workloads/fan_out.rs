//! w2, `fan-out`: 1 → 3, every reader gets every byte, against coreutils
//! tee.

use crate::competitors::{Relay, tee, throughput_workload};
use crate::fifod::fifod_body;
use crate::harness::{GIB, IO_CHUNK, MIB, Opts, Res};
use crate::reference;
use crate::report::{Report, throughput_table};
use crate::traffic::pattern;

/// The physical-limit row.
const REFERENCE: &str = "reference tee+splice relay";

pub fn run(o: &Opts, r: &mut Report) -> Res<()> {
    let size = o.size(GIB);
    eprintln!("== 2: 1 -> 3 fan-out, {} MiB", size / MIB);
    let fifos = ["in", "out1", "out2", "out3"];
    let outs = ["out1", "out2", "out3"];
    let body = |ps: &str| fifod_body(&fifos, &[(&["in"], &outs)], ps);
    let variants = [
        ("fifod", Relay::Fifod(body("")), None),
        (REFERENCE, reference::relay("in", &outs), None),
        (
            "fifod pipe_size=64KiB",
            Relay::Fifod(body("pipe_size = \"64KiB\"")),
            None,
        ),
        ("coreutils tee", tee("in", &outs), None),
    ];
    let buf = pattern(4 * IO_CHUNK);
    let s = throughput_workload(
        o,
        "w2",
        &variants,
        &fifos,
        &[("in", buf, size)],
        &[("out1", size), ("out2", size), ("out3", size)],
        false,
    )?;
    throughput_table(
        r,
        &format!("2. 1 → 3 fan-out ({} MiB in, 3 × that out)", size / MIB),
        &s,
        "fifod",
        "GiB/s of input; every one of the three readers gets every byte. The reference \
         tee+splice relay is the physical limit: a minimal relay (poll, tee into every \
         output, then splice the part all have to /dev/null; 1 MiB FIFOs) written in the \
         bench.",
    );
    r.fact("w2_fifod", s.med("fifod"));
    r.fact("w2_reference", s.med(REFERENCE));
    r.fact("w2_tee", s.med("coreutils tee"));
    Ok(())
}
