//! Reloads by the hundred while writers and readers come and go: a config
//! that shrinks and grows under traffic, FIFOs renamed, processes added and
//! removed, policies and framing switched, broken files rejected. fifod must
//! keep running through all of it, keep the one route that never changes
//! byte-exact, keep every count adding up, and leave nothing behind.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::PollFlags;
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::common::{
    BULK_TIMEOUT, Daemon, Guarded, Joiner, KIB, Rng, TIMEOUT, Verifier, all_started_pids, array,
    assert_clean_stats, checked_counts, fill_pattern, gone_or_zombie, lstat, messages, names_in,
    num, open_reader, open_writer, parse_stats, poll_one, reload_outcomes, spawn, status_of, text,
    try_write, wait_until,
};

// ---------------------------------------------------------------------------
// The daemon's side: reloads, answers, death
// ---------------------------------------------------------------------------

/// The daemon's log, read on from where it was last read, so that waiting
/// for one reload does not parse the whole log of hundreds.
#[derive(Debug)]
struct LogTail {
    file: File,
    /// The start of a line not yet complete.
    partial: Vec<u8>,
    /// Reload outcomes seen and not yet taken.
    outcomes: Vec<Result<(), String>>,
}

impl LogTail {
    fn new(d: &Daemon) -> LogTail {
        let file = File::open(d.log_path()).expect("open the daemon's log");
        let mut tail = LogTail {
            file,
            partial: Vec::new(),
            outcomes: Vec::new(),
        };
        tail.read_on();
        tail.outcomes.clear();
        tail
    }

    /// Reads what the daemon logged since the last call.
    fn read_on(&mut self) {
        let mut more = Vec::new();
        self.file.read_to_end(&mut more).expect("read the log");
        self.partial.extend_from_slice(&more);
        let Some(last) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = self.partial.drain(..=last).collect();
        self.outcomes
            .extend(reload_outcomes(&String::from_utf8_lossy(&complete)));
    }

    /// The next reload outcome, if one was logged.
    fn next_outcome(&mut self) -> Option<Result<(), String>> {
        self.read_on();
        (!self.outcomes.is_empty()).then(|| self.outcomes.remove(0))
    }
}

/// The end of the log (its last lines, and every line about a panic) for a
/// failure message: the whole log of hundreds of reloads is too long.
fn log_end(d: &Daemon) -> String {
    let mut f = File::open(d.log_path()).expect("open the daemon's log");
    let len = f.metadata().expect("stat the log").len();
    f.seek(SeekFrom::Start(len.saturating_sub(16 * KIB as u64)))
        .expect("seek in the log");
    let mut end = Vec::new();
    f.read_to_end(&mut end).expect("read the log");
    let end = String::from_utf8_lossy(&end);
    let lines: Vec<&str> = end.lines().collect();
    let mut out = String::new();
    // A panic's message is on the line after `panicked at`.
    let panics: Vec<&str> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains(" panicked at "))
        .flat_map(|(i, _)| lines[i..].iter().take(2).copied())
        .collect();
    if !panics.is_empty() {
        let _ = writeln!(out, "--- panic ---\n{}", panics.join("\n"));
    }
    let _ = writeln!(
        out,
        "--- last lines of the log ---\n{}",
        lines[lines.len().saturating_sub(40)..].join("\n")
    );
    out
}

/// Panics: fifod exited with `st` during `what`.
fn died(d: &Daemon, st: ExitStatus, what: &str) -> ! {
    panic!("fifod exited with {st} during {what}\n{}", log_end(d));
}

/// Sends SIGHUP and waits (deadline) for the reload's outcome in the log;
/// panics at once if fifod exits first.
fn reload(d: &mut Daemon, tail: &mut LogTail, what: &str) -> Result<(), String> {
    if let Some(st) = d.try_exited() {
        died(d, st, what);
    }
    d.signal(Signal::SIGHUP);
    let end = Instant::now() + TIMEOUT;
    loop {
        if let Some(outcome) = tail.next_outcome() {
            return outcome;
        }
        if let Some(st) = d.try_exited() {
            died(d, st, what);
        }
        assert!(
            Instant::now() < end,
            "no outcome of {what} within {TIMEOUT:?}\n{}",
            log_end(d)
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `fifod status --json`, parsed. An answer also proves that fifod got past
/// the loop iteration that logged the last reload: it connected after that
/// line was written, so its accept comes in a later batch of events.
fn answer(d: &mut Daemon, what: &str) -> Value {
    let out = status_of(&d.sb, true);
    if out.status.code() != Some(0) {
        if wait_until(Duration::from_secs(1), || d.try_exited().is_some())
            && let Some(st) = d.try_exited()
        {
            died(d, st, what);
        }
        panic!(
            "fifod status after {what}: {:?}\n{}\n{}",
            out.status,
            out.stderr,
            log_end(d)
        );
    }
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status after {what}: {e}\n{}", out.stdout))
}

/// Every sink of every route adds up: produced = delivered + held + dropped
/// (bytes, and lines on line routes).
fn assert_counts_add_up(status: &Value) {
    for route in array(status, "routes") {
        for sink in array(route, "sinks") {
            checked_counts(sink);
        }
    }
}

/// Every `stats route[N] -> SINK:` line of the final log adds up:
/// accepted = delivered + dropped + undelivered (`parse_stats` checks it).
fn assert_final_stats_add_up(log: &str) {
    let mut seen = 0;
    for m in messages(log) {
        let Some(rest) = m.strip_prefix("stats route[") else {
            continue;
        };
        let (route, rest) = rest.split_once("] -> ").expect("a stats line");
        let (sink, _) = rest.split_once(": ").expect("a stats line");
        parse_stats(log, route.parse().expect("a route index"), sink);
        seen += 1;
    }
    assert!(seen > 0, "no stats lines at stop");
}

/// After a clean stop: the run dir fifod made is gone with everything in
/// it (FIFOs, subdirectories, lock, control socket), and the sandbox holds
/// only the config and the logs of the commands the test ran.
fn assert_left_nothing(d: &Daemon) {
    let run = d.sb.run_dir();
    if lstat(&run).is_some() {
        panic!(
            "{} is still there, with {:?}\n{}",
            run.display(),
            names_in(&run),
            log_end(d)
        );
    }
    let extra: Vec<_> = names_in(d.sb.root())
        .into_iter()
        .filter(|n| {
            let n = n.to_string_lossy();
            n != "fifod.toml" && !n.ends_with(".log")
        })
        .collect();
    assert!(extra.is_empty(), "left in the sandbox: {extra:?}");
    let alive: Vec<i32> = all_started_pids(&d.log())
        .into_iter()
        .filter(|&pid| !gone_or_zombie(pid))
        .collect();
    assert!(
        alive.is_empty(),
        "processes fifod started still run: {alive:?}"
    );
}

// ---------------------------------------------------------------------------
// Churn: writers and readers that come and go, never blocking
// ---------------------------------------------------------------------------

/// Where the churn threads go: the inputs and outputs of the routes that
/// come and go. A path that is not there (yet, or any more) is skipped.
#[derive(Debug, Default, Clone)]
struct Targets {
    inputs: Vec<PathBuf>,
    outputs: Vec<PathBuf>,
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    targets: Mutex<Targets>,
    /// Writes that went into an input.
    writes: AtomicU64,
    /// Bytes read from outputs.
    read: AtomicU64,
    failure: Mutex<Option<String>>,
}

impl Shared {
    fn fail(&self, why: String) {
        self.failure.lock().unwrap().get_or_insert(why);
    }

    fn pick(&self, rng: &mut Rng, outputs: bool) -> Option<PathBuf> {
        let t = self.targets.lock().unwrap();
        let list = if outputs { &t.outputs } else { &t.inputs };
        (!list.is_empty()).then(|| list[rng.between(0, list.len() - 1)].clone())
    }
}

/// Whole lines of letters, one `write(2)` of at most PIPE_BUF, so that the
/// kernel keeps it whole and line routes never see a line cut by a writer.
fn churn_batch(rng: &mut Rng) -> Vec<u8> {
    let mut batch = Vec::new();
    loop {
        let len = rng.between(0, 300);
        if batch.len() + len + 1 > libc::PIPE_BUF {
            return batch;
        }
        batch.extend((0..len).map(|_| b'a' + (rng.next() % 26) as u8));
        batch.push(b'\n');
        if rng.between(0, 3) == 0 {
            return batch;
        }
    }
}

/// Opens `path` non-blocking; `None` when it is not there or (for a writer)
/// has no reader, as happens to a FIFO a reload is taking away.
fn try_open(path: &Path, write: bool) -> Result<Option<File>, String> {
    match OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENXIO) => {
            Ok(None)
        }
        Err(e) => Err(format!("open {}: {e}", path.display())),
    }
}

/// Connects to an input, writes a few batches (giving up on a full pipe or
/// a FIFO that went), leaves, pauses; until told to stop.
fn churn_writer(mut rng: Rng, sh: Arc<Shared>) {
    while !sh.stop.load(Ordering::SeqCst) {
        let Some(path) = sh.pick(&mut rng, false) else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        match try_open(&path, true) {
            Ok(Some(f)) => {
                for _ in 0..rng.between(1, 4) {
                    match try_write(&f, &churn_batch(&mut rng)) {
                        Ok(_) => {
                            sh.writes.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock
                                    | io::ErrorKind::BrokenPipe
                                    | io::ErrorKind::Interrupted
                            ) =>
                        {
                            break;
                        }
                        Err(e) => return sh.fail(format!("write {}: {e}", path.display())),
                    }
                }
            }
            Ok(None) => {}
            Err(why) => return sh.fail(why),
        }
        std::thread::sleep(Duration::from_micros(rng.between(0, 1500) as u64));
    }
}

/// Connects to an output, reads what is there (up to a random amount),
/// checking that every byte is one a churn writer could have written, and
/// leaves; until told to stop.
fn churn_reader(mut rng: Rng, sh: Arc<Shared>) {
    let mut buf = vec![0u8; 16 * KIB];
    while !sh.stop.load(Ordering::SeqCst) {
        let Some(path) = sh.pick(&mut rng, true) else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        match try_open(&path, false) {
            Ok(Some(f)) => {
                let budget = rng.between(1, 64) * KIB;
                let mut got = 0;
                while got < budget {
                    match (&f).read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if let Some(b) = buf[..n]
                                .iter()
                                .find(|&&b| b != b'\n' && !b.is_ascii_lowercase())
                            {
                                return sh.fail(format!(
                                    "{}: byte {b:#04x} that no writer wrote",
                                    path.display()
                                ));
                            }
                            got += n;
                            sh.read.fetch_add(n as u64, Ordering::SeqCst);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return sh.fail(format!("read {}: {e}", path.display())),
                    }
                }
            }
            Ok(None) => {}
            Err(why) => return sh.fail(why),
        }
        std::thread::sleep(Duration::from_micros(rng.between(0, 1500) as u64));
    }
}

/// The churn threads; dropping it (a failed test) stops them too.
#[derive(Debug)]
struct Churn {
    sh: Arc<Shared>,
    threads: Vec<Joiner<()>>,
}

impl Churn {
    fn start(seed: u64, writers: usize, readers: usize, targets: Targets) -> Churn {
        let sh = Arc::new(Shared {
            targets: Mutex::new(targets),
            ..Shared::default()
        });
        let mut threads = Vec::new();
        for i in 0..writers + readers {
            let rng = Rng::new(seed ^ (0xc4a0_5000 + i as u64));
            let sh = Arc::clone(&sh);
            threads.push(if i < writers {
                spawn(move || churn_writer(rng, sh))
            } else {
                spawn(move || churn_reader(rng, sh))
            });
        }
        Churn { sh, threads }
    }

    fn set(&self, targets: Targets) {
        *self.sh.targets.lock().unwrap() = targets;
    }

    fn writes(&self) -> u64 {
        self.sh.writes.load(Ordering::SeqCst)
    }

    /// Panics with the first thing a churn thread found wrong.
    fn check(&self, d: &Daemon) {
        if let Some(why) = self.sh.failure.lock().unwrap().clone() {
            panic!("{why}\n{}", log_end(d));
        }
    }

    /// Waits until `n` more writes went in than `since`: bytes flow on the
    /// routes that come and go.
    fn wait_writes(&self, d: &mut Daemon, since: u64, n: u64, what: &str) {
        let end = Instant::now() + TIMEOUT;
        while self.writes() < since + n {
            self.check(d);
            if let Some(st) = d.try_exited() {
                died(d, st, what);
            }
            assert!(
                Instant::now() < end,
                "no writer got a byte in for {TIMEOUT:?} after {what}\n{}",
                log_end(d)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Stops the threads and waits for them.
    fn finish(mut self, d: &Daemon) {
        self.sh.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join(TIMEOUT);
        }
        self.check(d);
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.sh.stop.store(true, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// 1. The known crash: a reload that shrinks the tables mid-batch
// ---------------------------------------------------------------------------

/// 30 routes `inN -> outN`, or (`all` false) route 0 alone.
fn numbered_routes(all: bool) -> String {
    let n = if all { 30 } else { 1 };
    let mut t = String::from("[daemon]\nshutdown_timeout = \"2s\"\n");
    for i in 0..n {
        let _ = write!(t, "\n[fifo.in{i}]\n[fifo.out{i}]\n");
    }
    for i in 0..n {
        let _ = write!(t, "\n[[route]]\nfrom = [\"in{i}\"]\nto = [\"out{i}\"]\n");
    }
    t
}

/// Writers and readers come and go on routes 1 to 29 while the config
/// flips between all 30 routes and route 0 alone, a hundred times: every
/// shrink happens while bytes flow on the routes it removes, so the SIGHUP
/// tends to arrive in the same batch of events as those routes' FIFOs. A
/// reload renumbers the sources and sinks; what is left of the batch must
/// not be taken for the new numbering. fifod must apply each reload and
/// keep running, and stop cleanly after.
#[test]
fn a_config_that_shrinks_while_data_flows_never_kills_fifod() {
    const RELOADS: usize = 100;
    let mut d = Daemon::start(&numbered_routes(true));
    let mut tail = LogTail::new(&d);
    let churn = Churn::start(
        0x5412_0001,
        4,
        2,
        Targets {
            inputs: (1..30).map(|i| d.fifo(&format!("in{i}"))).collect(),
            outputs: (1..30).map(|i| d.fifo(&format!("out{i}"))).collect(),
        },
    );
    let t0 = Instant::now();
    for n in 1..=RELOADS {
        let shrink = n % 2 == 1;
        let what = format!(
            "reload {n} of {RELOADS} (to {})",
            if shrink { "route 0 alone" } else { "30 routes" }
        );
        if shrink {
            // Bytes flow on the routes about to go.
            let since = churn.writes();
            churn.wait_writes(&mut d, since, 8, &what);
        }
        d.sb.write_config(&numbered_routes(!shrink));
        if let Err(why) = reload(&mut d, &mut tail, &what) {
            panic!("{what} failed: {why}\n{}", log_end(&d));
        }
        let st = answer(&mut d, &what);
        assert_eq!(
            array(&st, "routes").len(),
            if shrink { 1 } else { 30 },
            "{what} not applied"
        );
        assert_counts_add_up(&st);
        churn.check(&d);
    }
    let chaos = t0.elapsed();
    churn.finish(&d);
    if let Some(st) = d.try_exited() {
        died(&d, st, "the end of the reloads");
    }
    d.stop_ok();
    assert_left_nothing(&d);
    eprintln!("{RELOADS} reloads under traffic in {chaos:?}");
}

// ---------------------------------------------------------------------------
// 2. Chaos: hundreds of random reloads under traffic
// ---------------------------------------------------------------------------

/// Routes that come and go, at most.
const MAX_ROUTES: usize = 12;
/// Reloads in the chaos test.
const CHAOS_RELOADS: usize = 300;
const POLICIES: [&str; 3] = ["block", "drop-newest", "drop-oldest"];
const BUFFERS: [&str; 3] = ["4KiB", "64KiB", "1MiB"];
/// Variants of the process on a route: each change restarts it.
const CATS: [&str; 3] = [
    r#"command = ["cat"]"#,
    r#"command = ["cat", "-u"]"#,
    "command = [\"cat\"]\nstderr = \"null\"",
];

/// A route that comes and goes: `in{i}` (and `inb{i}`) to `out{i}` (and
/// `tap{i}`), straight or through a process `cat{i}`.
#[derive(Debug, Clone)]
struct Dyn {
    /// Its FIFOs' names end in `_{name_gen}`, their paths in `_{path_gen}`:
    /// a new name at the same path is the same FIFO, a new path a new one.
    name_gen: u32,
    path_gen: u32,
    /// The paths are in the subdirectory `g/` of the run dir.
    sub: bool,
    fan_in: bool,
    fan_out: bool,
    /// Through process `cat{i}` (one of `CATS`).
    cat: Option<usize>,
    lines: bool,
    policy: usize,
    buffer: usize,
}

impl Dyn {
    fn random(rng: &mut Rng, gen_: &mut u32) -> Dyn {
        *gen_ += 1;
        Dyn {
            name_gen: *gen_,
            path_gen: *gen_,
            sub: rng.between(0, 3) == 0,
            fan_in: rng.between(0, 3) == 0,
            fan_out: rng.between(0, 3) == 0,
            cat: (rng.between(0, 2) == 0).then(|| rng.between(0, CATS.len() - 1)),
            lines: rng.between(0, 2) == 0,
            policy: rng.between(0, POLICIES.len() - 1),
            buffer: rng.between(0, BUFFERS.len() - 1),
        }
    }

    /// (name, path relative to the run dir) of its FIFOs with `stems`.
    fn fifos(&self, i: usize, stems: &[&str]) -> Vec<(String, String)> {
        stems
            .iter()
            .map(|stem| {
                let dir = if self.sub { "g/" } else { "" };
                (
                    format!("{stem}{i}_{}", self.name_gen),
                    format!("{dir}{stem}{i}_{}", self.path_gen),
                )
            })
            .collect()
    }

    fn inputs(&self, i: usize) -> Vec<(String, String)> {
        self.fifos(i, if self.fan_in { &["in", "inb"] } else { &["in"] })
    }

    fn outputs(&self, i: usize) -> Vec<(String, String)> {
        self.fifos(
            i,
            if self.fan_out {
                &["out", "tap"]
            } else {
                &["out"]
            },
        )
    }
}

/// One config of the chaos test: the stable route and the ones that come
/// and go.
#[derive(Debug, Clone)]
struct Chaos {
    keep_in_mode: &'static str,
    /// An unrouted FIFO `spare_{n}`.
    spare: Option<u32>,
    routes: Vec<Dyn>,
}

/// A TOML list of quoted names.
fn quoted(names: &[String]) -> String {
    let q: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!("[{}]", q.join(", "))
}

impl Chaos {
    fn toml(&self) -> String {
        let mut t = format!(
            r#"[daemon]
shutdown_timeout = "3s"

[fifo.keep_in]
mode = "{}"

[fifo.keep_out]

[[route]]
from = ["keep_in"]
to = ["keep_out"]
when_full = "block"
"#,
            self.keep_in_mode
        );
        if let Some(n) = self.spare {
            let _ = write!(t, "\n[fifo.spare_{n}]\n");
        }
        for (i, r) in self.routes.iter().enumerate() {
            let ins = r.inputs(i);
            let outs = r.outputs(i);
            for (name, path) in ins.iter().chain(&outs) {
                let _ = write!(t, "\n[fifo.{name}]\npath = \"{path}\"\n");
            }
            let names = |v: &[(String, String)]| -> Vec<String> {
                v.iter().map(|(n, _)| n.clone()).collect()
            };
            let policy = format!(
                "framing = \"{}\"\nwhen_full = \"{}\"\nbuffer = \"{}\"\n",
                if r.lines { "lines" } else { "bytes" },
                POLICIES[r.policy],
                BUFFERS[r.buffer]
            );
            match r.cat {
                None => {
                    let _ = write!(
                        t,
                        "\n[[route]]\nfrom = {}\nto = {}\n{policy}",
                        quoted(&names(&ins)),
                        quoted(&names(&outs))
                    );
                }
                Some(c) => {
                    let _ = write!(
                        t,
                        "\n[process.cat{i}]\n{}\n\n[[route]]\nfrom = {}\nto = [\"cat{i}\"]\n{policy}\n[[route]]\nfrom = [\"cat{i}\"]\nto = {}\n{policy}",
                        CATS[c],
                        quoted(&names(&ins)),
                        quoted(&names(&outs))
                    );
                }
            }
        }
        t
    }

    /// Where the churn threads go in this config.
    fn targets(&self, d: &Daemon) -> Targets {
        let mut t = Targets::default();
        for (i, r) in self.routes.iter().enumerate() {
            t.inputs
                .extend(r.inputs(i).iter().map(|(_, p)| d.sb.run_dir().join(p)));
            t.outputs
                .extend(r.outputs(i).iter().map(|(_, p)| d.sb.run_dir().join(p)));
        }
        t
    }

    /// The FIFO names, process names and route count fifod must report.
    fn expected(&self) -> (Vec<String>, Vec<String>, usize) {
        let mut fifos = vec!["keep_in".to_string(), "keep_out".to_string()];
        fifos.extend(self.spare.map(|n| format!("spare_{n}")));
        let mut processes = Vec::new();
        let mut routes = 1;
        for (i, r) in self.routes.iter().enumerate() {
            fifos.extend(r.inputs(i).into_iter().map(|(n, _)| n));
            fifos.extend(r.outputs(i).into_iter().map(|(n, _)| n));
            if r.cat.is_some() {
                processes.push(format!("cat{i}"));
                routes += 2;
            } else {
                routes += 1;
            }
        }
        fifos.sort();
        processes.sort();
        (fifos, processes, routes)
    }

    /// Changes the config at random; says how.
    fn mutate(&mut self, rng: &mut Rng, gen_: &mut u32) -> String {
        let len = self.routes.len();
        match rng.between(0, 11) {
            0..=2 => {
                let n = rng.between(0, len.saturating_sub(1));
                self.routes.truncate(n);
                format!("shrink {len} -> {n} routes")
            }
            3..=5 => {
                let n = rng.between(len.min(MAX_ROUTES - 1) + 1, MAX_ROUTES);
                while self.routes.len() < n {
                    self.routes.push(Dyn::random(rng, gen_));
                }
                format!("grow {len} -> {n} routes")
            }
            6 => {
                if len > 1 {
                    self.routes.truncate(rng.between(0, 1));
                } else {
                    while self.routes.len() < MAX_ROUTES {
                        self.routes.push(Dyn::random(rng, gen_));
                    }
                }
                format!("flip {len} -> {} routes", self.routes.len())
            }
            7 => {
                let mut what = String::from("rename");
                for (i, r) in self.routes.iter_mut().enumerate() {
                    if rng.between(0, 2) == 0 {
                        *gen_ += 1;
                        r.name_gen = *gen_;
                        if rng.between(0, 1) == 0 {
                            r.path_gen = *gen_;
                            r.sub = rng.between(0, 3) == 0;
                            let _ = write!(what, " {i}(path)");
                        } else {
                            let _ = write!(what, " {i}(name)");
                        }
                    }
                }
                what
            }
            8 => {
                let mut what = String::from("processes");
                for (i, r) in self.routes.iter_mut().enumerate() {
                    if rng.between(0, 2) == 0 {
                        r.cat = match r.cat {
                            Some(_) if rng.between(0, 1) == 0 => None,
                            _ => Some(rng.between(0, CATS.len() - 1)),
                        };
                        let _ = write!(what, " {i}:{:?}", r.cat);
                    }
                }
                what
            }
            9 => {
                let mut what = String::from("policies");
                for (i, r) in self.routes.iter_mut().enumerate() {
                    if rng.between(0, 1) == 0 {
                        r.policy = rng.between(0, POLICIES.len() - 1);
                        r.buffer = rng.between(0, BUFFERS.len() - 1);
                        let _ = write!(what, " {i}:{}/{}", POLICIES[r.policy], BUFFERS[r.buffer]);
                    }
                }
                what
            }
            10 => {
                let mut what = String::from("framing");
                for (i, r) in self.routes.iter_mut().enumerate() {
                    if rng.between(0, 1) == 0 {
                        r.lines = !r.lines;
                        r.fan_in ^= rng.between(0, 3) == 0;
                        r.fan_out ^= rng.between(0, 3) == 0;
                        let _ = write!(what, " {i}:{}", if r.lines { "lines" } else { "bytes" });
                    }
                }
                what
            }
            _ => {
                self.keep_in_mode = if self.keep_in_mode == "0600" {
                    "0620"
                } else {
                    "0600"
                };
                *gen_ += 1;
                self.spare = match self.spare {
                    Some(_) => None,
                    None => Some(*gen_),
                };
                format!("keep_in mode {}, spare {:?}", self.keep_in_mode, self.spare)
            }
        }
    }

    /// A broken file made from this config, and what is wrong with it.
    fn broken(&self, rng: &mut Rng) -> (String, &'static str) {
        let good = self.toml();
        match rng.between(0, 3) {
            0 => (
                format!("{good}\n[[route]\nfrom = [\"keep_in\"\n"),
                "invalid TOML",
            ),
            1 => (
                good.replacen(
                    "[fifo.keep_out]\n",
                    "[fifo.keep_out]\ncolour = \"blue\"\n",
                    1,
                ),
                "an unknown key",
            ),
            2 => (
                format!("{good}\n[[route]]\nfrom = [\"keep_in\"]\nto = [\"nowhere\"]\n"),
                "an unknown endpoint",
            ),
            _ => (
                good.replacen("when_full = \"block\"", "when_full = \"sometimes\"", 1),
                "an invalid policy",
            ),
        }
    }
}

/// The seed of the chaos: `FIFOD_CHAOS_SEED` to replay one, else new.
fn chaos_seed() -> u64 {
    match std::env::var("FIFOD_CHAOS_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("FIFOD_CHAOS_SEED={s:?} is not a number"))
        }
        Err(_) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("a clock after 1970");
            now.as_secs() ^ u64::from(now.subsec_nanos()) ^ u64::from(std::process::id())
        }
    }
}

/// Sets its flag when dropped: threads that watch it stop when the test
/// ends, however it ends.
#[derive(Debug)]
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The stable route's stream: a writer streaming stream `seed` into
/// `keep_in` until told to stop, a reader verifying it on `keep_out`.
#[derive(Debug)]
struct Stable {
    /// Dropping it (a failed test) stops the writer too.
    stop: StopOnDrop,
    /// Bytes verified so far.
    verified: Arc<AtomicU64>,
    /// Bytes written, once the writer stopped.
    total: Arc<AtomicU64>,
    failure: Arc<Mutex<Option<String>>>,
    writer: Joiner<File>,
    reader: Joiner<File>,
}

impl Stable {
    fn start(d: &Daemon, seed: u64) -> Stable {
        let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
        let verified = Arc::new(AtomicU64::new(0));
        let total = Arc::new(AtomicU64::new(u64::MAX));
        let failure: Arc<Mutex<Option<String>>> = Arc::default();
        let r = open_reader(&d.fifo("keep_out"));
        let w = open_writer(&d.fifo("keep_in"));
        let writer = {
            let (stop, total, failure) = (
                Arc::clone(&stop.0),
                Arc::clone(&total),
                Arc::clone(&failure),
            );
            spawn(move || {
                let mut chunk = vec![0u8; 8 * KIB];
                let mut written = 0u64;
                let mut end = Instant::now() + TIMEOUT;
                'stream: while !stop.load(Ordering::SeqCst) {
                    fill_pattern(seed, written, &mut chunk);
                    let mut done = 0;
                    while done < chunk.len() {
                        match try_write(&w, &chunk[done..]) {
                            Ok(n) => {
                                done += n;
                                written += n as u64;
                                end = Instant::now() + TIMEOUT;
                            }
                            // A blocking route: wait for room, not forever,
                            // and stop in the middle of a chunk if told to.
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                if stop.load(Ordering::SeqCst) {
                                    break 'stream;
                                }
                                if Instant::now() >= end {
                                    *failure.lock().unwrap() = Some(format!(
                                        "keep_in: no room for {TIMEOUT:?} after {written} bytes"
                                    ));
                                    break 'stream;
                                }
                                poll_one(&w, PollFlags::POLLOUT, Duration::from_millis(50));
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                *failure.lock().unwrap() =
                                    Some(format!("write keep_in after {written} bytes: {e}"));
                                break 'stream;
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                total.store(written, Ordering::SeqCst);
                w
            })
        };
        let reader = {
            let (verified, total, failure) = (
                Arc::clone(&verified),
                Arc::clone(&total),
                Arc::clone(&failure),
            );
            spawn(move || {
                let mut v = Verifier::new(seed, 0);
                let mut buf = vec![0u8; 64 * KIB];
                let mut end = Instant::now() + TIMEOUT;
                while v.offset < total.load(Ordering::SeqCst) {
                    // Short waits, to see the total once it is known.
                    let k = match (&r).read(&mut buf) {
                        Ok(0) => {
                            *failure.lock().unwrap() =
                                Some(format!("keep_out: EOF after {} bytes", v.offset));
                            break;
                        }
                        Ok(k) => k,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if Instant::now() >= end {
                                *failure.lock().unwrap() = Some(format!(
                                    "keep_out: nothing for {TIMEOUT:?} after {} bytes",
                                    v.offset
                                ));
                                break;
                            }
                            poll_one(&r, PollFlags::POLLIN, Duration::from_millis(50));
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            *failure.lock().unwrap() = Some(format!("read keep_out: {e}"));
                            break;
                        }
                    };
                    if let Err(e) = v.check(&buf[..k]) {
                        *failure.lock().unwrap() = Some(format!("keep_out: {e}"));
                        break;
                    }
                    verified.store(v.offset, Ordering::SeqCst);
                    end = Instant::now() + TIMEOUT;
                }
                r
            })
        };
        Stable {
            stop,
            verified,
            total,
            failure,
            writer,
            reader,
        }
    }

    fn verified(&self) -> u64 {
        self.verified.load(Ordering::SeqCst)
    }

    fn check(&self, d: &Daemon) {
        if let Some(why) = self.failure.lock().unwrap().clone() {
            panic!("the stable route: {why}\n{}", log_end(d));
        }
    }

    /// Waits until the reader verified more than `since`: the stable route
    /// flows.
    fn wait_more(&self, d: &mut Daemon, since: u64, what: &str) {
        let end = Instant::now() + TIMEOUT;
        while self.verified() <= since {
            self.check(d);
            if let Some(st) = d.try_exited() {
                died(d, st, what);
            }
            assert!(
                Instant::now() < end,
                "the stable route stalled at {since} bytes after {what}\n{}",
                log_end(d)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Stops the writer and waits until the reader verified all it wrote;
    /// returns how much that was, and both ends.
    fn finish(self, d: &Daemon) -> (u64, File, File) {
        self.stop.0.store(true, Ordering::SeqCst);
        let w = self.writer.join(BULK_TIMEOUT);
        let total = self.total.load(Ordering::SeqCst);
        let r = self.reader.join(TIMEOUT + TIMEOUT);
        if let Some(why) = self.failure.lock().unwrap().clone() {
            panic!("the stable route: {why}\n{}", log_end(d));
        }
        let verified = self.verified.load(Ordering::SeqCst);
        assert_eq!(verified, total, "keep_out: bytes verified vs written");
        (total, w, r)
    }
}

/// Reads every output of `targets` until fifod holds nothing any more: no
/// FIFO has bytes queued and no byte route holds any (a line route may
/// keep a line a writer left unfinished). Returns the last status.
fn drain(d: &mut Daemon, targets: &Targets) -> Value {
    let readers: Vec<(PathBuf, File)> = targets
        .outputs
        .iter()
        .map(|p| (p.clone(), open_reader(p)))
        .collect();
    let mut buf = vec![0u8; 64 * KIB];
    let end = Instant::now() + TIMEOUT;
    loop {
        for (path, r) in &readers {
            loop {
                match (&*r).read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => assert!(
                        buf[..n]
                            .iter()
                            .all(|&b| b == b'\n' || b.is_ascii_lowercase()),
                        "{}: bytes no writer wrote",
                        path.display()
                    ),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read {}: {e}", path.display()),
                }
            }
        }
        let st = answer(d, "the drain");
        assert_counts_add_up(&st);
        let queued: Vec<String> = array(&st, "fifos")
            .iter()
            .filter(|f| num(f, "queued") > 0)
            .map(|f| format!("{} ({} queued)", text(f, "name"), num(f, "queued")))
            .collect();
        let held: Vec<String> = array(&st, "routes")
            .iter()
            .filter(|r| text(r, "framing") == "bytes")
            .flat_map(|r| {
                array(r, "sinks")
                    .iter()
                    .filter(|s| num(s, "held") > 0)
                    .map(move |s| {
                        format!(
                            "route[{}] -> {} ({} held)",
                            num(r, "index"),
                            text(s, "sink"),
                            num(s, "held")
                        )
                    })
            })
            .collect();
        if queued.is_empty() && held.is_empty() {
            return st;
        }
        assert!(
            Instant::now() < end,
            "fifod still has {queued:?} {held:?} after {TIMEOUT:?} of reading\n{st}\n{}",
            log_end(d)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A few hundred reloads, each a random change of the config (shrink,
/// grow, rename, processes in and out, policies, framing) or a broken file,
/// while writers and readers come and go on the routes that change and one
/// route that never changes streams a pattern throughout.
#[test]
fn hundreds_of_random_reloads_under_traffic_keep_every_promise() {
    let seed = chaos_seed();
    eprintln!("reload chaos: seed {seed} (FIFOD_CHAOS_SEED={seed} replays it)");
    let mut rng = Rng::new(seed);
    let mut gen_ = 0u32;
    let mut cfg = Chaos {
        keep_in_mode: "0600",
        spare: None,
        routes: Vec::new(),
    };
    while cfg.routes.len() < MAX_ROUTES / 2 {
        cfg.routes.push(Dyn::random(&mut rng, &mut gen_));
    }
    let mut g = Guarded::start(&cfg.toml());
    let d: &mut Daemon = &mut g;
    let mut tail = LogTail::new(d);
    let stable = Stable::start(d, seed);
    let churn = Churn::start(seed, 4, 2, cfg.targets(d));
    let t0 = Instant::now();
    let (mut applied, mut rejected) = (0, 0);
    for n in 1..=CHAOS_RELOADS {
        // Bytes flow on the stable route, and on the others if any.
        let flowed = stable.verified();
        stable.wait_more(d, flowed, &format!("reload {}", n - 1));
        if !cfg.routes.is_empty() {
            let since = churn.writes();
            churn.wait_writes(d, since, 1, &format!("reload {}", n - 1));
        }
        let broken = rng.between(0, 11) == 0;
        let (outcome, what) = if broken {
            let (text, why) = cfg.broken(&mut rng);
            let what = format!("reload {n} of {CHAOS_RELOADS} (seed {seed}): {why}");
            d.sb.write_config(&text);
            let outcome = reload(d, &mut tail, &what);
            // `fifod status` reads the file too (for the control socket).
            d.sb.write_config(&cfg.toml());
            (outcome, what)
        } else {
            let mut next = cfg.clone();
            let how = next.mutate(&mut rng, &mut gen_);
            let what = format!("reload {n} of {CHAOS_RELOADS} (seed {seed}): {how}");
            d.sb.write_config(&next.toml());
            let outcome = reload(d, &mut tail, &what);
            if outcome.is_ok() {
                cfg = next;
            }
            (outcome, what)
        };
        let st = answer(d, &what);
        match (broken, outcome) {
            (false, Ok(())) => applied += 1,
            (true, Err(why)) => {
                assert!(why.contains("invalid"), "{what}: failed with {why:?}");
                rejected += 1;
            }
            (false, Err(why)) => panic!("{what} failed: {why}\n{}", log_end(d)),
            (true, Ok(())) => panic!("{what} was applied\n{}", log_end(d)),
        }
        // What fifod runs is the last config that was applied.
        let (fifos, processes, routes) = cfg.expected();
        let names = |list: &str| -> Vec<String> {
            let mut v: Vec<String> = array(&st, list)
                .iter()
                .map(|e| text(e, "name").to_string())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names("fifos"), fifos, "FIFOs after {what}");
        assert_eq!(names("processes"), processes, "processes after {what}");
        assert_eq!(array(&st, "routes").len(), routes, "routes after {what}");
        assert_counts_add_up(&st);
        churn.set(cfg.targets(d));
        churn.check(d);
        stable.check(d);
    }
    let chaos = t0.elapsed();

    // Traffic stops; everything is read.
    churn.finish(d);
    let (total, w, r) = stable.finish(d);
    let st = drain(d, &cfg.targets(d));
    assert_counts_add_up(&st);
    if let Some(st) = d.try_exited() {
        died(d, st, "the drain");
    }
    drop(w);
    d.stop_ok();
    drop(r);
    let log = d.log();
    assert_clean_stats(d, 0, "keep_out", total);
    assert_final_stats_add_up(&log);
    assert_left_nothing(d);
    eprintln!(
        "reload chaos (seed {seed}): {applied} reloads applied, {rejected} broken files \
         rejected in {chaos:?}; {total} bytes byte-exact on the stable route"
    );
}
