//! w5, `scale`: many routes in one daemon: start-up, memory, the cost of
//! idling, and traffic through every route at once.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::fifod::{Fifod, pairs_body, start_fifod};
use crate::harness::{KIB, MIB, Opts, Res, guarded};
use crate::report::{Report, Samples, gibs};
use crate::sys::{open_nonblock, proc_cpu, proc_status};
use crate::traffic::pattern;
use crate::watchdog::{clear_deadline, deadline};

/// Moves `each` bytes through every fd with one poll loop, waiting for
/// `events`: `step` moves what it can on a ready fd, at most the bytes
/// given, and says how many it moved (0 when none could).
fn pump(
    fds: &[OwnedFd],
    each: u64,
    events: libc::c_short,
    what: &str,
    mut step: impl FnMut(RawFd, u64) -> Res<u64>,
) -> Res<()> {
    let mut done: Vec<u64> = vec![0; fds.len()];
    let end = Instant::now() + Duration::from_secs(120);
    let index: BTreeMap<RawFd, usize> = fds
        .iter()
        .enumerate()
        .map(|(i, f)| (f.as_raw_fd(), i))
        .collect();
    loop {
        let mut pfds: Vec<libc::pollfd> = fds
            .iter()
            .zip(&done)
            .filter(|(_, d)| **d < each)
            .map(|(f, _)| libc::pollfd {
                fd: f.as_raw_fd(),
                events,
                revents: 0,
            })
            .collect();
        if pfds.is_empty() {
            return Ok(());
        }
        if Instant::now() > end {
            return Err(format!("{what}: deadline"));
        }
        // SAFETY: pfds is a valid array of pollfd.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 1000) };
        if r < 0 {
            continue;
        }
        for p in pfds.iter().filter(|p| p.revents != 0) {
            let i = index[&p.fd];
            done[i] += step(p.fd, each - done[i])?;
        }
        if done.iter().any(|&d| d > each) {
            return Err(format!("{what}: more than was written"));
        }
    }
}

/// Writes `each` bytes into every fd (non-blocking, one poll loop).
fn pump_writes(fds: Vec<OwnedFd>, each: u64, buf: &[u8]) -> Res<()> {
    pump(&fds, each, libc::POLLOUT, "writers", |fd, left| {
        let n = left.min(buf.len() as u64) as usize;
        // SAFETY: writes from a live buffer to an fd we own.
        let w = unsafe { libc::write(fd, buf.as_ptr().cast(), n) };
        if w >= 0 {
            Ok(w as u64)
        } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) {
            Ok(0)
        } else {
            Err(format!("write: {}", std::io::Error::last_os_error()))
        }
    })
}

/// Reads `each` bytes from every fd (non-blocking, one poll loop).
fn pump_reads(fds: Vec<OwnedFd>, each: u64) -> Res<()> {
    let mut buf = vec![0u8; 64 * 1024];
    pump(&fds, each, libc::POLLIN, "readers", |fd, _| {
        // SAFETY: reads into a live buffer from an fd we own.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => Err("unexpected EOF on an output".into()),
            n if n > 0 => Ok(n as u64),
            _ => Ok(0),
        }
    })
}

/// Named metrics of one scale run, and the idle cost (CPU s, switches).
type ScaleRun = (Vec<(&'static str, f64)>, Option<(f64, f64)>);

/// One start of the 1,000-route daemon: ready time, memory, idle cost (when
/// `idle`), then traffic through every route at once.
fn scale_run(
    o: &Opts,
    f: &Fifod,
    dir: &Path,
    pairs: usize,
    each: u64,
    idle: bool,
) -> Res<ScaleRun> {
    let pid = f.pid();
    let mut m = vec![
        ("ready ms", f.startup.as_secs_f64() * 1e3),
        (
            "RSS at ready MiB",
            proc_status(pid, "VmRSS")? as f64 / 1024.0,
        ),
    ];
    let mut idle_cost = None;
    if idle {
        let cs = |p| -> Res<u64> {
            Ok(proc_status(p, "voluntary_ctxt_switches")?
                + proc_status(p, "nonvoluntary_ctxt_switches")?)
        };
        let (c0, s0) = (proc_cpu(pid)?, cs(pid)?);
        thread::sleep(Duration::from_secs(o.idle_secs));
        let (c1, s1) = (proc_cpu(pid)?, cs(pid)?);
        idle_cost = Some((c1 - c0, (s1 - s0) as f64));
    }
    let d = dir.join("run");
    let ins = (0..pairs)
        .map(|i| open_nonblock(&d.join(format!("in{i}")), true))
        .collect::<Res<Vec<_>>>()?;
    let outs = (0..pairs)
        .map(|i| open_nonblock(&d.join(format!("out{i}")), false))
        .collect::<Res<Vec<_>>>()?;
    let cpu0 = proc_cpu(pid)?;
    let buf = pattern(64 * 1024);
    let t0 = Instant::now();
    let w = thread::spawn(move || pump_writes(ins, each, &buf));
    let rd = pump_reads(outs, each);
    let wr = w.join().map_err(|_| "writer panicked")?;
    let secs = t0.elapsed().as_secs_f64();
    rd?;
    wr?;
    m.push(("traffic GiB/s", gibs(each * pairs as u64, secs)));
    m.push(("fifod CPU s during traffic", proc_cpu(pid)? - cpu0));
    m.push((
        "peak RSS (VmHWM) MiB",
        proc_status(pid, "VmHWM")? as f64 / 1024.0,
    ));
    m.push((
        "RSS after traffic MiB",
        proc_status(pid, "VmRSS")? as f64 / 1024.0,
    ));
    Ok((m, idle_cost))
}

pub fn run(o: &Opts, r: &mut Report) -> Res<()> {
    let pairs: usize = std::env::var("BENCH_SCALE_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let each = if o.quick { 64 * KIB } else { MIB };
    eprintln!("== 5: scale, {pairs} routes ({} FIFOs)", 2 * pairs);
    let body = pairs_body(pairs);
    let mut s = Samples::default();
    let mut idle_cpu = f64::NAN;
    let mut idle_cs = f64::NAN;
    for rep in 0..o.runs {
        let one = || -> Res<ScaleRun> {
            deadline(
                Duration::from_secs(90 + o.idle_secs),
                &format!("w5 run {}", rep + 1),
            );
            let dir = o.fresh("run")?;
            let f = start_fifod(&o.fifod, &dir, &body)?;
            let res = scale_run(o, &f, &dir, pairs, each, rep == 0);
            let stopped = f.stop();
            let _ = fs::remove_dir_all(&dir);
            let res = res?;
            stopped?;
            clear_deadline();
            Ok(res)
        };
        let (metrics, idle) = guarded(one).map_err(|e| format!("w5: {e}"))?;
        let m = |k: &str| {
            metrics
                .iter()
                .find(|(n, _)| *n == k)
                .map_or(f64::NAN, |x| x.1)
        };
        eprintln!(
            "  [w5 run {}/{}] ready {:.1} ms, RSS {:.1} MiB, traffic {:.2} GiB/s \
             (fifod CPU {:.2} s), peak RSS {:.1} MiB, RSS after {:.1} MiB",
            rep + 1,
            o.runs,
            m("ready ms"),
            m("RSS at ready MiB"),
            m("traffic GiB/s"),
            m("fifod CPU s during traffic"),
            m("peak RSS (VmHWM) MiB"),
            m("RSS after traffic MiB"),
        );
        for (k, v) in metrics {
            s.push(k, v);
        }
        if let Some((cpu, cs)) = idle {
            idle_cpu = cpu;
            idle_cs = cs;
        }
    }
    let _ = writeln!(
        r.text,
        "\n### 5. Scale: {pairs} routes, {} FIFOs\n\n\
         Layout: {pairs} pairs `in<i>` → `out<i>`, one route each ({pairs} routes, \
         {} FIFOs). Ready = from spawn to the log's \
         `ready:` line. Idle = {} s right after ready (first run only). Traffic = \
         {} KiB through every route at once (one poll-driven writer thread, one reader \
         thread).\n",
        2 * pairs,
        2 * pairs,
        o.idle_secs,
        each / KIB
    );
    let _ = writeln!(r.text, "| metric | median | min – max |");
    let _ = writeln!(r.text, "| --- | ---: | ---: |");
    for v in &s.order {
        let (lo, hi) = s.range(v);
        let _ = writeln!(r.text, "| {v} | {:.2} | {lo:.2} – {hi:.2} |", s.med(v));
    }
    let _ = writeln!(
        r.text,
        "| CPU while idle {} s (utime+stime) | {idle_cpu:.2} s | |\n\
         | context switches while idle | {idle_cs:.0} | |",
        o.idle_secs
    );
    r.fact("w5_ready_ms", s.med("ready ms"));
    r.fact("w5_rss", s.med("RSS at ready MiB"));
    r.fact("w5_idle_cpu", idle_cpu);
    r.fact("w5_idle_cs", idle_cs);
    Ok(())
}
