//! w3, `lines`: 4 → 1 fan-in of lines of mixed length, fifod's line route
//! (lines whole) against its byte route and merges by socat and cat.

use std::sync::Arc;

use crate::competitors::{Relay, cat_merge, socat_merge, throughput_workload};
use crate::fifod::fifod_body;
use crate::harness::{GIB, MIB, Opts, Res};
use crate::report::{Report, throughput_table};

/// Whole lines of mixed length (1 to ~8 KiB, mostly short), all made of
/// `letter`, about `len` bytes.
fn line_buffer(letter: u8, len: usize, seed: u64) -> Arc<Vec<u8>> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut v = Vec::with_capacity(len + 9000);
    while v.len() < len {
        let r = next();
        let l = match r % 100 {
            0..70 => 1 + (r >> 8) % 100,
            70..95 => 100 + (r >> 8) % 900,
            _ => 1000 + (r >> 8) % 7000,
        } as usize;
        v.extend(std::iter::repeat_n(letter, l));
        v.push(b'\n');
    }
    Arc::new(v)
}

pub fn run(o: &Opts, r: &mut Report) -> Res<()> {
    let total = o.size(GIB);
    eprintln!("== 3: 4 -> 1 lines, {} MiB", total / MIB);
    let fifos = ["in1", "in2", "in3", "in4", "out"];
    let ins = ["in1", "in2", "in3", "in4"];
    let lines_body = format!(
        "{}framing = \"lines\"\n",
        fifod_body(&fifos, &[(&ins, &["out"])], "")
    );
    let variants = [
        ("fifod lines", Relay::Fifod(lines_body), None),
        (
            "fifod bytes",
            Relay::Fifod(fifod_body(&fifos, &[(&ins, &["out"])], "")),
            None,
        ),
        ("4 × socat -u", socat_merge(&ins, "out"), None),
        ("4 × cat", cat_merge(&ins, "out"), None),
    ];
    let bufs: Vec<Arc<Vec<u8>>> = (0..4)
        .map(|i| line_buffer(b'a' + i as u8, MIB as usize, 0x9e37_79b9 + i as u64))
        .collect();
    // Whole buffers only, so every writer ends on a newline.
    let each: Vec<u64> = bufs
        .iter()
        .map(|b| (total / 4).div_ceil(b.len() as u64) * b.len() as u64)
        .collect();
    let sum: u64 = each.iter().sum();
    let writers: Vec<(&str, Arc<Vec<u8>>, u64)> = (0..4)
        .map(|i| (ins[i], Arc::clone(&bufs[i]), each[i]))
        .collect();
    let s = throughput_workload(o, "w3", &variants, &fifos, &writers, &[("out", sum)], true)?;
    throughput_table(
        r,
        &format!("3. 4 → 1 fan-in, lines of mixed length ({} MiB)", sum / MIB),
        &s,
        "fifod lines",
        "Four writers, lines of 1 B – 8 KiB (70 % under 100 B), written in 128 KiB \
         chunks that split lines anywhere. \"torn\" counts lines that got another \
         writer's bytes in the middle; the socat/cat merges and fifod's byte route do \
         not keep lines whole and are speed references only.",
    );
    r.fact("w3_fifod_lines", s.med("fifod lines"));
    r.fact("w3_fifod_lines_torn", s.med_extra("fifod lines", "torn"));
    Ok(())
}
