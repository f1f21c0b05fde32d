//! w6, `cat`: FIFO → cat → FIFO, fifod starting `cat` as a process between
//! two routes, against the shell pipeline `cat in | cat > out`.

use crate::competitors::{Relay, cat_pipeline, throughput_workload};
use crate::harness::{GIB, IO_CHUNK, MIB, Opts, Res};
use crate::report::{Report, throughput_table};
use crate::traffic::pattern;

pub fn run(o: &Opts, r: &mut Report) -> Res<()> {
    let size = o.size(2 * GIB);
    eprintln!("== 6: FIFO -> cat -> FIFO, {} MiB", size / MIB);
    let body = "[fifo.in]\n[fifo.out]\n[process.cat]\ncommand = [\"cat\"]\n\
                [[route]]\nfrom = [\"in\"]\nto = [\"cat\"]\n\
                [[route]]\nfrom = [\"cat\"]\nto = [\"out\"]\n";
    let variants = [
        ("fifod + cat", Relay::Fifod(body.to_string()), None),
        ("cat in | cat > out", cat_pipeline("in", "out"), None),
    ];
    let buf = pattern(4 * IO_CHUNK);
    let s = throughput_workload(
        o,
        "w6",
        &variants,
        &["in", "out"],
        &[("in", buf, size)],
        &[("out", size)],
        false,
    )?;
    throughput_table(
        r,
        &format!("6. FIFO → cat → FIFO ({} MiB)", size / MIB),
        &s,
        "fifod + cat",
        "fifod: route in → process `cat` → out (two splices into/out of cat's pipes). \
         Shell: `cat in | cat > out` (the first cat plays fifod's part). Relay CPU \
         includes the cat processes.",
    );
    r.fact("w6_fifod", s.med("fifod + cat"));
    r.fact("w6_shell", s.med("cat in | cat > out"));
    Ok(())
}
