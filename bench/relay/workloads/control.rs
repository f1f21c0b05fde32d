//! w8, `control`: whether clients of fifod's control socket cost the relay
//! anything. The 64-byte ping-pong of w4 through one daemon that also has
//! idle routes (`BENCH_CONTROL_PAIRS`, so that its status answer is the
//! size of a real deployment's), in three conditions, a fresh daemon each:
//! no control client; a burst of 2,000 connections that never read; 16
//! connections that never read while another client asks for the status
//! over and over.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::fifod::{Fifod, fifod_body, pairs_body, start_fifod};
use crate::harness::{KIB, Opts, Res, guarded};
use crate::report::{Report, Samples};
use crate::sys::{connect_nonblock, ensure_nofile};
use crate::watchdog::{clear_deadline, deadline};
use crate::workloads::latency::{percentile, ping_pong};

/// Idle routes `in<i>` → `out<i>` beside the two of the ping-pong.
const PAIRS: usize = 200;
/// Connections of the burst.
const BURST: usize = 2_000;
/// Connections that never read, as many as fifod serves at once.
const NON_READERS: usize = 16;
/// The clients start this long after the ping-pong, past its warm-up (the
/// first 1 %: 1.3 ms of 20,000 round trips on one CPU here).
const LEAD: Duration = Duration::from_millis(5);
/// A status query that takes longer fails the run.
const QUERY_LIMIT: Duration = Duration::from_secs(5);
/// The targets: p99 and longest round trip under control clients ≤ this ×
/// quiet's.
const RATIO: f64 = 1.5;

const QUIET: &str = "quiet";
const FLOOD: &str = "2,000-connection burst";
const STATUS: &str = "16 non-readers + status loop";
const CONDITIONS: [&str; 3] = [QUIET, FLOOD, STATUS];

/// Keys of the per-run client counts (`Samples::push_extra`).
const CONNECTED: &str = "connected";
const REFUSED: &str = "refused";
const FULL: &str = "answered in full";
const CUT: &str = "cut off";
const WAITING: &str = "waiting";
const BURST_MS: &str = "burst ms";
const ANSWERS: &str = "status answers";
const SLOWEST: &str = "slowest answer ms";
const CPU: &str = "cpu";
const SIZE: &str = "answer bytes";
const SECS: &str = "ping-pong s";
const WARNINGS: &str = "warnings";

/// What the control clients of one run saw.
#[derive(Default)]
struct Clients {
    counts: Vec<(&'static str, f64)>,
}

impl Clients {
    fn set(&mut self, key: &'static str, v: f64) {
        self.counts.push((key, v));
    }
}

fn pairs() -> Res<usize> {
    match std::env::var("BENCH_CONTROL_PAIRS") {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("BENCH_CONTROL_PAIRS={v}: not a number")),
        Err(_) => Ok(PAIRS),
    }
}

/// How a connection that never read stands once the ping-pong is over,
/// from what it can read without waiting: the whole answer and the end
/// (fifod wrote it all and closed), the end after part of it or none (fifod
/// dropped it), or no end yet (still in the listen queue or being written).
fn standing(s: &mut UnixStream, buf: &mut [u8]) -> &'static str {
    let mut last = None;
    loop {
        match s.read(buf) {
            Ok(0) if last == Some(b'\n') => return FULL,
            Ok(0) => return CUT,
            Ok(n) => last = buf.get(n - 1).copied(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return WAITING,
            Err(_) => return CUT,
        }
    }
}

/// Counts how the connections that never read stand (see `standing`).
fn tally(conns: &mut [UnixStream], c: &mut Clients) {
    let mut buf = vec![0u8; 64 * KIB as usize];
    let mut n = [(FULL, 0usize), (CUT, 0), (WAITING, 0)];
    for s in conns {
        let got = standing(s, &mut buf);
        if let Some(x) = n.iter_mut().find(|x| x.0 == got) {
            x.1 += 1;
        }
    }
    for (k, v) in n {
        c.set(k, v as f64);
    }
}

/// One status query: connect, read to EOF. The answer's size, or `None`
/// if `stop` came first.
fn query(sock: &Path, stop: &AtomicBool, buf: &mut Vec<u8>) -> Res<Option<usize>> {
    let end = Instant::now() + QUERY_LIMIT;
    let late = || Instant::now() > end;
    let mut s = loop {
        match connect_nonblock(sock) {
            Ok(s) => break s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && !late() => {
                if stop.load(Ordering::SeqCst) {
                    return Ok(None);
                }
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(format!("status: connect {}: {e}", sock.display())),
        }
    };
    let fail = |e: io::Error| format!("status: {e}");
    s.set_nonblocking(false).map_err(fail)?;
    // Short reads, so that `stop` is seen while fifod has not answered yet
    // (the connection waits in the listen queue while its slots are full).
    s.set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(fail)?;
    buf.clear();
    loop {
        match s.read_to_end(buf) {
            Ok(_) => break,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                if stop.load(Ordering::SeqCst) {
                    return Ok(None);
                }
                if late() {
                    return Err(format!(
                        "status: no whole answer within {QUERY_LIMIT:?} ({} bytes)",
                        buf.len()
                    ));
                }
            }
            Err(e) => return Err(format!("status: read: {e}")),
        }
    }
    if buf.last() != Some(&b'\n') {
        return Err(format!("status: answer cut off after {} bytes", buf.len()));
    }
    Ok(Some(buf.len()))
}

/// One status query before the measurement: the answer must be a status
/// document with every FIFO. Returns its size.
fn probe(sock: &Path, fifos: usize) -> Res<usize> {
    let mut buf = Vec::new();
    let n = query(sock, &AtomicBool::new(false), &mut buf)?.ok_or("status: no answer")?;
    let doc: serde_json::Value =
        serde_json::from_slice(&buf).map_err(|e| format!("status: not JSON: {e}"))?;
    let listed = doc["fifos"].as_array().map_or(0, Vec::len);
    if listed != fifos {
        return Err(format!("status: {listed} FIFOs listed, {fifos} expected"));
    }
    Ok(n)
}

/// The burst: after LEAD, `BURST` connections as fast as they go, none of
/// them read; one refused for a full listen queue is counted and tried
/// again. Returns the connections (open until the caller drops them), the
/// refusals, and how long the connects took in ms.
fn burst(sock: PathBuf, stop: Arc<AtomicBool>) -> Res<(Vec<UnixStream>, usize, f64)> {
    thread::sleep(LEAD);
    let t = Instant::now();
    let mut conns = Vec::with_capacity(BURST);
    let mut refused = 0;
    while conns.len() < BURST && !stop.load(Ordering::SeqCst) {
        match connect_nonblock(&sock) {
            Ok(s) => conns.push(s),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                refused += 1;
                thread::yield_now();
            }
            Err(e) => {
                return Err(format!(
                    "burst: connect {} (after {}): {e}",
                    sock.display(),
                    conns.len()
                ));
            }
        }
    }
    Ok((conns, refused, t.elapsed().as_secs_f64() * 1e3))
}

/// After LEAD, `NON_READERS` connections that never read, then status
/// queries one after the other until `stop`. Returns the non-readers, the
/// answers read in full and the slowest one's time in ms.
fn status_loop(sock: PathBuf, stop: Arc<AtomicBool>) -> Res<(Vec<UnixStream>, usize, f64)> {
    thread::sleep(LEAD);
    let idle = (0..NON_READERS)
        .map(|_| connect_nonblock(&sock))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| format!("non-reader: connect {}: {e}", sock.display()))?;
    let mut buf = Vec::new();
    let (mut answers, mut slowest) = (0, 0.0f64);
    while !stop.load(Ordering::SeqCst) {
        let t = Instant::now();
        if query(&sock, &stop, &mut buf)?.is_none() {
            break;
        }
        answers += 1;
        slowest = slowest.max(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((idle, answers, slowest))
}

/// With fifod up: the probe, then the ping-pong under `cond`'s clients.
/// Returns the round trips (µs) and the clients' counts.
fn measure(f: &Fifod, dir: &Path, cond: &str, n: usize, pairs: usize) -> Res<(Vec<f64>, Clients)> {
    let d = dir.join("run");
    let sock = d.join("control.sock");
    let mut c = Clients::default();
    let size = probe(&sock, 4 + 2 * pairs)?;
    c.set(SIZE, size as f64);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = (cond != QUIET).then(|| {
        let (sock, stop) = (sock.clone(), Arc::clone(&stop));
        let flood = cond == FLOOD;
        thread::spawn(move || {
            if flood {
                burst(sock, stop)
            } else {
                status_loop(sock, stop)
            }
        })
    });
    let t = Instant::now();
    let rtt = ping_pong(
        &d.join("a_in"),
        &d.join("b_out"),
        &d.join("b_in"),
        &d.join("a_out"),
        n,
    );
    stop.store(true, Ordering::SeqCst);
    c.set(SECS, t.elapsed().as_secs_f64());
    if let Some(t) = clients {
        let (mut conns, k, ms) = t.join().map_err(|_| "control clients panicked")??;
        if cond == FLOOD {
            c.set(CONNECTED, conns.len() as f64);
            c.set(REFUSED, k as f64);
            c.set(BURST_MS, ms);
        } else {
            c.set(ANSWERS, k as f64);
            c.set(SLOWEST, ms);
        }
        tally(&mut conns, &mut c);
    }
    let warnings: Vec<String> = f
        .log()
        .lines()
        .filter(|l| l.contains(" WARN "))
        .map(str::to_string)
        .collect();
    for w in &warnings {
        eprintln!("  fifod: {w}");
    }
    c.set(WARNINGS, warnings.len() as f64);
    Ok((rtt?, c))
}

/// One fresh daemon, one condition.
fn one(o: &Opts, cond: &str, n: usize, pairs: usize) -> Res<(Vec<f64>, Clients)> {
    let dir = o.fresh("run")?;
    let body = fifod_body(
        &["a_in", "b_out", "b_in", "a_out"],
        &[(&["a_in"], &["b_out"]), (&["b_in"], &["a_out"])],
        "",
    ) + &pairs_body(pairs);
    let res = start_fifod(&o.fifod, &dir, &body).and_then(|f| {
        let res = measure(&f, &dir, cond, n, pairs);
        let cpu = f.stop();
        let (rtt, mut c) = res?;
        c.set(CPU, cpu?);
        Ok((rtt, c))
    });
    let _ = fs::remove_dir_all(&dir);
    res
}

pub fn run(o: &Opts, r: &mut Report) -> Res<()> {
    let n = if o.quick { 2_000 } else { 20_000 };
    let pairs = pairs()?;
    // fifod: 2 fds per FIFO and 64 more, and up to 16 clients; here: the
    // burst's connections.
    ensure_nofile((2 * (4 + 2 * pairs) + 64 + BURST + 256) as u64)?;
    eprintln!(
        "== 8: control clients, {n} round trips of 64 B, {} FIFOs",
        4 + 2 * pairs
    );
    let mut p50 = Samples::default();
    let mut p99 = Samples::default();
    let mut max = Samples::default();
    let mut counts = Samples::default();
    for rep in 0..o.runs {
        for cond in CONDITIONS {
            let res = guarded(|| {
                // A status loop makes the ping-pong about 60 times slower
                // on one CPU (8 s here), more when other work shares it.
                deadline(Duration::from_secs(120), &format!("w8 / {cond}"));
                one(o, cond, n, pairs)
            });
            let (mut rtt, c) = res.map_err(|e| format!("w8 / {cond}: {e}"))?;
            clear_deadline();
            // The first 1 % warms caches and wakes the scheduler up.
            let mut rtt = rtt.split_off(n / 100);
            let (a, b) = (percentile(&mut rtt, 0.50), percentile(&mut rtt, 0.99));
            let m = rtt.last().copied().unwrap_or(f64::NAN);
            let seen: Vec<String> = c
                .counts
                .iter()
                .map(|(k, v)| {
                    if v.fract() == 0.0 {
                        format!("{k} {v:.0}")
                    } else {
                        format!("{k} {v:.2}")
                    }
                })
                .collect();
            eprintln!(
                "  [w8 run {}/{}] {cond}: p50 {a:.1} µs, p99 {b:.1} µs, max {m:.1} µs ({})",
                rep + 1,
                o.runs,
                seen.join(", ")
            );
            p50.push(cond, a);
            p99.push(cond, b);
            max.push(cond, m);
            for (k, v) in c.counts {
                counts.push_extra(cond, k, v);
            }
        }
    }
    let _ = writeln!(
        r.text,
        "\n### 8. Control clients and the relay: 64-byte ping-pong ({n} round trips)\n\n\
         The ping-pong of w4 through one daemon that also has {pairs} idle routes ({} FIFOs; \
         its status answer is {:.0} KiB), a fresh daemon per condition. Quiet: no control \
         client. Burst: {} ms into the ping-pong a thread connects {BURST} times to the \
         control socket as fast as it can and reads nothing; the connections stay open \
         to the end (a connect refused for a full listen queue is counted and retried). \
         Non-readers + status loop: {} ms in, {NON_READERS} connections that never read, \
         then one client reads the status (connect, read to EOF) over and over. Medians \
         over the runs of each run's percentile and maximum; the client counts are \
         medians too, taken when the ping-pong ended (\"answered\": fifod wrote the whole \
         answer and closed; \"cut off\": it closed partway, having dropped a client that \
         read nothing for 1 s; \"waiting\": neither yet).\n",
        4 + 2 * pairs,
        counts.med_extra(QUIET, SIZE) / KIB as f64,
        LEAD.as_millis(),
        LEAD.as_millis(),
    );
    let _ = writeln!(
        r.text,
        "| condition | p50 µs | p99 µs | p99 min – max | max µs | max min – max | p99 ÷ quiet p99 | fifod CPU s | control clients |"
    );
    let _ = writeln!(
        r.text,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    let quiet = p99.med(QUIET);
    for cond in CONDITIONS {
        let (lo, hi) = p99.range(cond);
        let (mlo, mhi) = max.range(cond);
        let x = |k| counts.med_extra(cond, k);
        let ended = format!(
            "{:.0} answered, {:.0} cut off, {:.0} waiting",
            x(FULL),
            x(CUT),
            x(WAITING)
        );
        let mut clients = match cond {
            FLOOD => format!(
                "{:.0} connected in {:.1} ms, {:.0} refused; {ended}",
                x(CONNECTED),
                x(BURST_MS),
                x(REFUSED)
            ),
            STATUS => format!(
                "{:.0} status answers (slowest {:.1} ms); non-readers: {ended}",
                x(ANSWERS),
                x(SLOWEST)
            ),
            _ => "none".to_string(),
        };
        if x(WARNINGS) > 0.0 {
            let _ = write!(clients, "; {:.0} warnings in fifod's log", x(WARNINGS));
        }
        let _ = writeln!(
            r.text,
            "| {cond} | {:.1} | {:.1} | {lo:.1} – {hi:.1} | {:.1} | {mlo:.1} – {mhi:.1} | {:.2}× | {:.2} | {clients} |",
            p50.med(cond),
            p99.med(cond),
            max.med(cond),
            p99.med(cond) / quiet,
            x(CPU),
        );
    }
    r.fact("w8_quiet_p99", quiet);
    r.fact("w8_burst_p99", p99.med(FLOOD));
    r.fact("w8_status_p99", p99.med(STATUS));
    r.fact("w8_quiet_max", max.med(QUIET));
    r.fact("w8_burst_max", max.med(FLOOD));
    r.fact("w8_status_max", max.med(STATUS));
    Ok(())
}

/// Control clients must not cost the relay: p99 and the longest round
/// trip within RATIO × quiet's (a single stall moves the maximum only).
pub fn targets(f: &dyn Fn(&str) -> f64, check: &mut dyn FnMut(&str, String, bool)) {
    if f("w8_quiet_p99").is_nan() {
        return;
    }
    for (what, cond) in [("control burst", "burst"), ("status clients", "status")] {
        for (stat, name) in [("p99", "p99"), ("max", "longest round trip")] {
            let (got, quiet) = (
                f(&format!("w8_{cond}_{stat}")),
                f(&format!("w8_quiet_{stat}")),
            );
            let x = got / quiet;
            check(
                &format!("{what}: {name} ≤ {RATIO}× quiet's"),
                format!("{got:.1} vs {quiet:.1} µs = {x:.2}×"),
                x <= RATIO,
            );
        }
    }
}
