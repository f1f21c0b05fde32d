//! Reloads by the hundred while writers and readers come and go: a config
//! that shrinks and grows under traffic. fifod must keep running through
//! all of it, keep every count adding up, and leave nothing behind.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::common::{
    Daemon, Joiner, KIB, Rng, TIMEOUT, all_started_pids, array, checked_counts, gone_or_zombie,
    lstat, names_in, reload_outcomes, spawn, status_of, try_write, wait_until,
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
