//! w7, `reload`: reload at scale. One daemon with N FIFOs (N / 2 routes
//! `in<i>` → `out<i>`): time to READY, memory after READY, then a reload
//! that adds one FIFO and one route while small timestamped messages stream
//! through an unrelated route (`in0` → `out0`): how long the reload takes,
//! and how long that route stalls meanwhile. Runs at 1,000, 3,000 and 9,000
//! FIFOs (`BENCH_RELOAD_FIFOS`) so that the scaling shows.

use std::fmt::Write as _;
use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::fifod::{Fifod, config_text, pairs_body, start_fifod};
use crate::harness::{Opts, Res, guarded};
use crate::report::{Report, Samples};
use crate::sys::{ensure_nofile, open_r, open_w, proc_status};
use crate::watchdog::{clear_deadline, deadline};

/// The FIFO counts of the targets, and two below them for the scaling.
const SIZES: [usize; 3] = [1_000, 3_000, 9_000];
/// The targets (at 9,000 FIFOs).
const READY_MS: f64 = 1_000.0;
const RSS_MIB: f64 = 64.0;
const STALL_MS: f64 = 20.0;
/// One message on the streamed route every this long.
const INTERVAL: Duration = Duration::from_millis(1);
/// A message: its sequence number and when it was written (ns after the
/// stream's start), little-endian.
const MSG: usize = 16;

/// The streamed route: a writer thread sends a message every INTERVAL; a
/// reader thread notes when each one arrives.
struct Stream {
    base: Instant,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    writer: thread::JoinHandle<Res<()>>,
    /// (arrival, latency), both in ns after `base`, one per message.
    reader: thread::JoinHandle<Res<Vec<(u64, u64)>>>,
}

impl Stream {
    fn start(input: &Path, output: &Path) -> Res<Stream> {
        let mut w = open_w(input)?;
        let r = open_r(output)?;
        let base = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (stop_w, sent_w) = (Arc::clone(&stop), Arc::clone(&sent));
        let writer = thread::spawn(move || -> Res<()> {
            let mut seq = 0u64;
            while !stop_w.load(Ordering::SeqCst) {
                let mut msg = [0u8; MSG];
                msg[..8].copy_from_slice(&seq.to_le_bytes());
                let at = base.elapsed().as_nanos() as u64;
                msg[8..].copy_from_slice(&at.to_le_bytes());
                w.write_all(&msg)
                    .map_err(|e| format!("stream write: {e}"))?;
                seq += 1;
                sent_w.store(seq, Ordering::SeqCst);
                thread::sleep(INTERVAL);
            }
            Ok(())
        });
        let (stop_r, sent_r) = (Arc::clone(&stop), Arc::clone(&sent));
        let reader = thread::spawn(move || -> Res<Vec<(u64, u64)>> {
            let mut got = Vec::new();
            let mut buf = [0u8; 64 * MSG];
            let mut have = 0;
            // Until the writer stopped and every message it sent is here;
            // the poll's timeout lets it look at the counters now and then.
            while !(stop_r.load(Ordering::SeqCst)
                && got.len() as u64 >= sent_r.load(Ordering::SeqCst))
            {
                let mut p = libc::pollfd {
                    fd: r.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut p, 1, 20) } <= 0 {
                    continue;
                }
                // SAFETY: reads into the free end of a live buffer.
                let n =
                    unsafe { libc::read(p.fd, buf[have..].as_mut_ptr().cast(), buf.len() - have) };
                let now = base.elapsed().as_nanos() as u64;
                if n <= 0 {
                    return Err(format!("stream read: {}", std::io::Error::last_os_error()));
                }
                have += n as usize;
                let whole = have / MSG * MSG;
                for m in buf[..whole].chunks_exact(MSG) {
                    let word =
                        |i: usize| u64::from_le_bytes(m[i..i + 8].try_into().unwrap_or_default());
                    if word(0) != got.len() as u64 {
                        return Err(format!(
                            "stream: message {} arrived as number {}",
                            word(0),
                            got.len()
                        ));
                    }
                    got.push((now, now.saturating_sub(word(8))));
                }
                buf.copy_within(whole..have, 0);
                have -= whole;
            }
            Ok(got)
        });
        Ok(Stream {
            base,
            stop,
            sent,
            writer,
            reader,
        })
    }

    /// Stops the writer; returns every message's (arrival, latency).
    fn finish(self) -> Res<Vec<(u64, u64)>> {
        self.stop.store(true, Ordering::SeqCst);
        let w = self.writer.join().map_err(|_| "stream writer panicked")?;
        let r = self.reader.join().map_err(|_| "stream reader panicked")?;
        w?;
        let got = r?;
        if (got.len() as u64) < self.sent.load(Ordering::SeqCst) {
            return Err("stream: messages lost".into());
        }
        Ok(got)
    }
}

/// One run's numbers, by metric.
type Metrics = Vec<(&'static str, f64)>;

/// The metrics of the table, in its order.
const READY: &str = "ready ms";
const RSS: &str = "RSS at ready MiB";
const HWM: &str = "peak RSS (VmHWM) at ready MiB";
const RELOAD: &str = "reload ms";
const STALL: &str = "stall: max latency ms";
const GAP: &str = "max gap ms";
const CALM: &str = "before SIGHUP: max latency ms";
const AFTER: &str = "RSS after reload MiB";

fn mib(pid: i32, key: &str) -> Res<f64> {
    Ok(proc_status(pid, key)? as f64 / 1024.0)
}

/// With fifod up and READY: memory, then the stream and the reload.
fn measure(f: &Fifod, dir: &Path, body: &str, pairs: usize, window: Duration) -> Res<Metrics> {
    let pid = f.pid();
    let mut m = vec![
        (READY, f.startup.as_secs_f64() * 1e3),
        (RSS, mib(pid, "VmRSS")?),
        (HWM, mib(pid, "VmHWM")?),
    ];
    let run = dir.join("run");
    let stream = Stream::start(&run.join("in0"), &run.join("out0"))?;
    thread::sleep(window);
    // One FIFO and one route more, into the last route's output.
    let new = format!(
        "{body}[fifo.extra]\n[[route]]\nfrom = [\"extra\"]\nto = [\"out{}\"]\n",
        pairs - 1
    );
    fs::write(&f.config, config_text(dir, &new)).map_err(|e| e.to_string())?;
    let hup = stream.base.elapsed().as_nanos() as u64;
    let t_hup = Instant::now();
    f.signal(libc::SIGHUP);
    let done = f.wait_mark(
        &["] reload complete", "] reload failed"],
        Duration::from_secs(90),
    );
    if done.is_ok() {
        thread::sleep(window);
    }
    let got = stream.finish();
    let (t_done, line) = done?;
    if line.contains("failed") {
        return Err(format!("the reload failed: {line}"));
    }
    let got = got?;
    let extra = fs::metadata(run.join("extra")).map_err(|e| format!("extra: {e}"))?;
    if !extra.file_type().is_fifo() {
        return Err("the reload did not make the new FIFO".into());
    }
    m.push((RELOAD, (t_done - t_hup).as_secs_f64() * 1e3));
    let ms = |ns: u64| ns as f64 / 1e6;
    let max_latency = |pick: &dyn Fn(u64) -> bool| {
        let l = got.iter().filter(|g| pick(g.0)).map(|g| g.1).max();
        l.map_or(f64::NAN, ms)
    };
    m.push((STALL, max_latency(&|at| at >= hup)));
    let gap = got
        .windows(2)
        .filter(|w| w[1].0 >= hup)
        .map(|w| w[1].0 - w[0].0)
        .max();
    m.push((GAP, gap.map_or(f64::NAN, ms)));
    m.push((CALM, max_latency(&|at| at < hup)));
    m.push((AFTER, mib(pid, "VmRSS")?));
    Ok(m)
}

/// One start of fifod with `fifos` FIFOs.
fn one(o: &Opts, fifos: usize, window: Duration) -> Res<Metrics> {
    let pairs = fifos / 2;
    // fifod needs about 2 fds per FIFO and 64 more; the harness's own few
    // come on top.
    ensure_nofile(2 * (fifos as u64 + 1) + 64 + 64)?;
    let dir = o.fresh("run")?;
    let body = pairs_body(pairs);
    let f = start_fifod(&o.fifod, &dir, &body)?;
    let res = measure(&f, &dir, &body, pairs, window);
    let stopped = f.stop();
    let _ = fs::remove_dir_all(&dir);
    let res = res?;
    stopped?;
    Ok(res)
}

fn sizes() -> Res<Vec<usize>> {
    match std::env::var("BENCH_RELOAD_FIFOS") {
        Ok(v) => v
            .split(',')
            .map(|n| match n.trim().parse() {
                Ok(n) if n >= 2 => Ok(n),
                _ => Err(format!(
                    "BENCH_RELOAD_FIFOS={v}: not a list of FIFO counts ≥ 2"
                )),
            })
            .collect(),
        Err(_) => Ok(SIZES.to_vec()),
    }
}

/// A cell: the median, and the range when there are several runs.
fn cell(s: &Samples, variant: &str, runs: usize) -> String {
    let (lo, hi) = s.range(variant);
    if runs > 1 {
        format!("{:.1} ({lo:.1} – {hi:.1})", s.med(variant))
    } else {
        format!("{:.1}", s.med(variant))
    }
}

pub fn run(o: &Opts, r: &mut Report) -> Res<()> {
    let sizes = sizes()?;
    let window = Duration::from_millis(if o.quick { 250 } else { 1000 });
    eprintln!("== 7: reload at scale, {sizes:?} FIFOs");
    // One Samples per metric, the FIFO count as the variant.
    let mut s: Vec<(&str, Samples)> = Vec::new();
    for rep in 0..o.runs {
        for &n in &sizes {
            let m = guarded(|| {
                deadline(Duration::from_secs(180), &format!("w7 / {n} FIFOs"));
                one(o, n, window)
            })
            .map_err(|e| format!("w7 / {n} FIFOs: {e}"))?;
            clear_deadline();
            let get = |k: &str| m.iter().find(|x| x.0 == k).map_or(f64::NAN, |x| x.1);
            eprintln!(
                "  [w7 run {}/{}] {n} FIFOs: ready {:.1} ms, RSS {:.1} MiB, reload {:.1} ms, \
                 stall {:.1} ms (max gap {:.1} ms; {:.1} ms before SIGHUP), RSS after {:.1} MiB",
                rep + 1,
                o.runs,
                get(READY),
                get(RSS),
                get(RELOAD),
                get(STALL),
                get(GAP),
                get(CALM),
                get(AFTER),
            );
            for (k, v) in m {
                match s.iter_mut().find(|x| x.0 == k) {
                    Some((_, samples)) => samples.push(&n.to_string(), v),
                    None => {
                        let mut samples = Samples::default();
                        samples.push(&n.to_string(), v);
                        s.push((k, samples));
                    }
                }
            }
        }
    }
    let _ = writeln!(
        r.text,
        "\n### 7. Reload at scale\n\n\
         N FIFOs as N / 2 routes `in<i>` → `out<i>`. Ready = from spawn to the log's \
         `ready:` line; RSS read from /proc right after it. Then a writer thread sends \
         a {MSG}-byte timestamped message every {} ms through `in0` → `out0`; after {} ms \
         the config gains one FIFO and one route (`extra` → the last output) and fifod \
         gets SIGHUP. Reload = from SIGHUP to the log's `reload complete`. Stall = the \
         longest latency of a message that arrived after the SIGHUP (max gap: the \
         longest time between two arrivals then); the stream runs {} ms past the \
         reload. Medians (min – max over runs).\n",
        INTERVAL.as_millis(),
        window.as_millis(),
        window.as_millis(),
    );
    let metrics: Vec<&str> = s.iter().map(|x| x.0).collect();
    let _ = writeln!(r.text, "| FIFOs (routes) | {} |", metrics.join(" | "));
    let _ = writeln!(r.text, "| --- |{}", " ---: |".repeat(metrics.len()));
    for &n in &sizes {
        let cells: Vec<String> = s
            .iter()
            .map(|(_, x)| cell(x, &n.to_string(), o.runs))
            .collect();
        let _ = writeln!(r.text, "| {n} ({}) | {} |", n / 2, cells.join(" | "));
    }
    let med = |k: &str, n: usize| {
        s.iter()
            .find(|x| x.0 == k)
            .map_or(f64::NAN, |x| x.1.med(&n.to_string()))
    };
    if let Some(&n) = sizes.iter().max() {
        r.fact("w7_fifos", n as f64);
        r.fact("w7_ready_ms", med(READY, n));
        r.fact("w7_rss", med(RSS, n));
        r.fact("w7_stall_ms", med(STALL, n));
        r.fact("w7_reload_ms", med(RELOAD, n));
    }
    Ok(())
}

/// The targets of the issue, at the largest count measured.
pub fn targets(f: &dyn Fn(&str) -> f64, check: &mut dyn FnMut(&str, String, bool)) {
    let n = f("w7_fifos");
    if n.is_nan() {
        return;
    }
    check(
        &format!("{n:.0} FIFOs READY < 1 s"),
        format!("{:.1} ms", f("w7_ready_ms")),
        f("w7_ready_ms") < READY_MS,
    );
    check(
        &format!("{n:.0} FIFOs < 64 MiB resident"),
        format!("{:.1} MiB", f("w7_rss")),
        f("w7_rss") < RSS_MIB,
    );
    check(
        &format!("{n:.0} FIFOs: reload stalls an unrelated route < 20 ms"),
        format!(
            "{:.1} ms (the reload took {:.1} ms)",
            f("w7_stall_ms"),
            f("w7_reload_ms")
        ),
        f("w7_stall_ms") < STALL_MS,
    );
}
