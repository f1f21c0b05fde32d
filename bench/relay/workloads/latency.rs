//! w4, `latency`: 64-byte ping-pong through two relays, against two socat
//! processes and a bare FIFO pair.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::competitors::socat_args;
use crate::fifod::{fifod_body, start_fifod};
use crate::harness::{Opts, Res, guarded};
use crate::procs::spawn;
use crate::report::{Report, Samples};
use crate::sys::{mkfifo, open_r, open_w};
use crate::watchdog::{clear_deadline, deadline};

/// Ping-pong of 64-byte messages: A writes `a_out`, B reads `b_in`, writes
/// `b_out`, A reads `a_in`. Returns round trips in microseconds.
pub(crate) fn ping_pong(
    a_out: &Path,
    b_in: &Path,
    b_out: &Path,
    a_in: &Path,
    n: usize,
) -> Res<Vec<f64>> {
    let barrier = Arc::new(Barrier::new(3));
    let (pb, pa) = (Arc::clone(&barrier), Arc::clone(&barrier));
    let (b_in, b_out) = (b_in.to_path_buf(), b_out.to_path_buf());
    let (a_in, a_out) = (a_in.to_path_buf(), a_out.to_path_buf());
    let b = thread::spawn(move || -> Res<()> {
        // Opens in an order that cannot deadlock against A with bare FIFOs:
        // B reads first, A writes first.
        let mut rd = open_r(&b_in);
        let mut wr = open_w(&b_out);
        pb.wait();
        let (rd, wr) = (
            rd.as_mut().map_err(|e| e.clone())?,
            wr.as_mut().map_err(|e| e.clone())?,
        );
        let mut msg = [0u8; 64];
        for _ in 0..n {
            rd.read_exact(&mut msg)
                .map_err(|e| format!("B read: {e}"))?;
            wr.write_all(&msg).map_err(|e| format!("B write: {e}"))?;
        }
        Ok(())
    });
    let a = thread::spawn(move || -> Res<Vec<f64>> {
        let mut wr = open_w(&a_out);
        let mut rd = open_r(&a_in);
        pa.wait();
        let (rd, wr) = (
            rd.as_mut().map_err(|e| e.clone())?,
            wr.as_mut().map_err(|e| e.clone())?,
        );
        let mut msg = [7u8; 64];
        let mut rtt = Vec::with_capacity(n);
        for i in 0..n {
            msg[0] = i as u8;
            let t = Instant::now();
            wr.write_all(&msg).map_err(|e| format!("A write: {e}"))?;
            rd.read_exact(&mut msg)
                .map_err(|e| format!("A read: {e}"))?;
            rtt.push(t.elapsed().as_secs_f64() * 1e6);
            if msg[0] != i as u8 {
                return Err("message out of order".into());
            }
        }
        Ok(rtt)
    });
    barrier.wait();
    let ra = a.join().map_err(|_| "A panicked")?;
    let rb = b.join().map_err(|_| "B panicked")?;
    rb?;
    ra
}

pub(crate) fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

pub fn run(o: &Opts, r: &mut Report) -> Res<()> {
    let n = if o.quick { 2_000 } else { 20_000 };
    eprintln!("== 4: latency, {n} round trips of 64 B");
    let mut p50 = Samples::default();
    let mut p99 = Samples::default();
    let variants = ["fifod", "socat", "direct FIFO pair"];
    for rep in 0..o.runs {
        for name in variants {
            let one = |dir: &Path| -> Res<(Vec<f64>, f64)> {
                match name {
                    "fifod" => {
                        let f = start_fifod(
                            &o.fifod,
                            dir,
                            &fifod_body(
                                &["a_in", "b_out", "b_in", "a_out"],
                                &[(&["a_in"], &["b_out"]), (&["b_in"], &["a_out"])],
                                "",
                            ),
                        )?;
                        let d = dir.join("run");
                        let rtt = ping_pong(
                            &d.join("a_in"),
                            &d.join("b_out"),
                            &d.join("b_in"),
                            &d.join("a_out"),
                            n,
                        );
                        let cpu = f.stop()?;
                        Ok((rtt?, cpu))
                    }
                    "socat" => {
                        let d = dir.join("f");
                        fs::create_dir(&d).map_err(|e| e.to_string())?;
                        for f in ["a_in", "b_out", "b_in", "a_out"] {
                            mkfifo(&d.join(f))?;
                        }
                        let one = |from: &str, to: &str| {
                            spawn(
                                "socat",
                                Command::new(&o.socat).args(socat_args(&d.join(from), &d.join(to))),
                                &[],
                            )
                        };
                        let s1 = one("a_in", "b_out")?;
                        let s2 = one("b_in", "a_out")?;
                        let rtt = ping_pong(
                            &d.join("a_in"),
                            &d.join("b_out"),
                            &d.join("b_in"),
                            &d.join("a_out"),
                            n,
                        );
                        let c1 = s1.finish(Duration::from_secs(10))?;
                        let c2 = s2.finish(Duration::from_secs(10))?;
                        Ok((rtt?, c1 + c2))
                    }
                    _ => {
                        let d = dir.join("f");
                        fs::create_dir(&d).map_err(|e| e.to_string())?;
                        mkfifo(&d.join("ab"))?;
                        mkfifo(&d.join("ba"))?;
                        let rtt = ping_pong(
                            &d.join("ab"),
                            &d.join("ab"),
                            &d.join("ba"),
                            &d.join("ba"),
                            n,
                        )?;
                        Ok((rtt, f64::NAN))
                    }
                }
            };
            let res = guarded(|| {
                deadline(Duration::from_secs(60), &format!("w4 / {name}"));
                let dir = o.fresh("run")?;
                let res = one(&dir);
                let _ = fs::remove_dir_all(&dir);
                res
            });
            let (mut rtt, cpu) = res.map_err(|e| format!("w4 / {name}: {e}"))?;
            clear_deadline();
            // The first 1 % warms caches and wakes the scheduler up.
            let mut rtt = rtt.split_off(n / 100);
            let (a, b) = (percentile(&mut rtt, 0.50), percentile(&mut rtt, 0.99));
            eprintln!(
                "  [w4 run {}/{}] {name}: p50 {a:.1} µs, p99 {b:.1} µs (relay CPU {cpu:.2} s)",
                rep + 1,
                o.runs
            );
            p50.push(name, a);
            p99.push(name, b);
        }
    }
    let _ = writeln!(
        r.text,
        "\n### 4. Latency: 64-byte ping-pong through two relays ({n} round trips)\n\n\
         A → relay 1 → B → relay 2 → A; fifod is one daemon with two routes, socat two \
         processes, the direct pair two bare FIFOs. Medians over the runs of each run's \
         percentile; ratio is fifod's latency ÷ the variant's (lower is better for fifod).\n"
    );
    let _ = writeln!(
        r.text,
        "| variant | p50 µs | p99 µs | p99 min – max | fifod p50 ÷ | fifod p99 ÷ |"
    );
    let _ = writeln!(r.text, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for v in variants {
        let (lo, hi) = p99.range(v);
        let _ = writeln!(
            r.text,
            "| {v} | {:.1} | {:.1} | {lo:.1} – {hi:.1} | {:.2}× | {:.2}× |",
            p50.med(v),
            p99.med(v),
            p50.med("fifod") / p50.med(v),
            p99.med("fifod") / p99.med(v),
        );
    }
    r.fact("w4_fifod_p99", p99.med("fifod"));
    r.fact("w4_socat_p99", p99.med("socat"));
    r.fact("w4_direct_p99", p99.med("direct FIFO pair"));
    Ok(())
}
