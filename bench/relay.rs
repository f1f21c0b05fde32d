//! Benchmark harness for fifod: every workload runs against fifod and the
//! usual alternatives (socat, cat, coreutils tee, shell pipelines, a bare
//! FIFO) in the same run, several times, and prints medians and ratios.
//!
//! Run it with `cargo bench --bench relay` (see BENCHMARKS.md). All traffic
//! goes through real FIFOs in a private temporary directory; the writers and
//! readers are threads of this program. Every wait has a deadline: a
//! watchdog kills every process this program started, removes the temporary
//! directory and exits if a run overstays, or on SIGINT/SIGTERM.
//!
//! Environment:
//! - `FIFOD_BIN`: the fifod binary (default: the one cargo built for this
//!   bench, i.e. `target/release/fifod` under the repository, or under
//!   `$CARGO_TARGET_DIR`).
//! - `BENCH_RUNS`: repetitions of every measurement (default 5).
//! - `BENCH_QUICK=1`: a smoke run (sizes / 32, 1 repetition, 1 s idle).
//! - `BENCH_IDLE_SECS`: idle period of the scale workload (default 10).
//! - `SOCAT`: the socat binary (default `socat` on PATH).
//! - `BENCH_CPUS`: `both` (default: every workload with the CPUs left to the
//!   scheduler, then with everything pinned to one CPU), `all` or `one`.
//! - `BENCH_SCALE_PAIRS`: input/output pairs of the scale workload (1000).
//! - `BENCH_TMPDIR`: where the temporary directory goes (default `/dev/shm`,
//!   a tmpfs like fifod's usual `/run`, else `$TMPDIR` or `/tmp`).
//!
//! Arguments (after `--`): workload names to run (`w1` … `w6`), default all.
//! Without `--bench` (which `cargo bench` passes) it does nothing, so that
//! `cargo test --all-targets` does not start it.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
/// Size of every write and read of the harness's writers and readers (the
/// size `cat` uses).
const IO_CHUNK: usize = 128 * 1024;

type Res<T> = Result<T, String>;

// ---- Cleanup, deadlines and signals ------------------------------------------

/// Everything that must go if the harness stops early.
struct Registry {
    /// Process groups of the children (each child leads its own group).
    groups: Vec<i32>,
    /// The temporary directory.
    dir: Option<PathBuf>,
    /// When the current step must be over, and what it is.
    deadline: Option<(Instant, String)>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    groups: Vec::new(),
    dir: None,
    deadline: None,
});
static SIGNALLED: AtomicI32 = AtomicI32::new(0);
static WATCHDOG_STARTED: AtomicBool = AtomicBool::new(false);

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNALLED.store(sig, Ordering::SeqCst);
}

/// Kills every registered process group and removes the temporary directory.
fn cleanup_all() {
    let mut r = registry();
    for &g in &r.groups {
        // SAFETY: plain kill(2) on a process group we created.
        unsafe { libc::kill(-g, libc::SIGKILL) };
    }
    for &g in &r.groups {
        let mut status = 0;
        // SAFETY: reaps our own child; WNOHANG would race the SIGKILL, so wait.
        unsafe { libc::waitpid(g, &mut status, 0) };
    }
    r.groups.clear();
    if let Some(dir) = r.dir.take() {
        let _ = fs::remove_dir_all(&dir);
    }
}

fn start_watchdog() {
    if WATCHDOG_STARTED.swap(true, Ordering::SeqCst) {
        return;
    }
    // SAFETY: the handler only stores into an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    thread::spawn(|| {
        loop {
            thread::sleep(Duration::from_millis(50));
            let sig = SIGNALLED.load(Ordering::SeqCst);
            if sig != 0 {
                eprintln!("\nbench: interrupted (signal {sig}); cleaning up");
                cleanup_all();
                std::process::exit(130);
            }
            let late = {
                let r = registry();
                match &r.deadline {
                    Some((at, what)) if Instant::now() > *at => Some(what.clone()),
                    _ => None,
                }
            };
            if let Some(what) = late {
                eprintln!("\nbench: DEADLINE passed during {what}; killing everything");
                cleanup_all();
                std::process::exit(3);
            }
        }
    });
}

/// Sets the deadline of the step that starts now.
fn deadline(within: Duration, what: &str) {
    registry().deadline = Some((Instant::now() + within, what.to_string()));
}

fn clear_deadline() {
    registry().deadline = None;
}

// ---- Small system helpers ------------------------------------------------------

fn cstr(p: &Path) -> Res<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())
}

fn mkfifo(p: &Path) -> Res<()> {
    let c = cstr(p)?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(format!(
            "mkfifo {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Opens a FIFO for writing (blocks until there is a reader; the watchdog
/// bounds the wait).
fn open_w(p: &Path) -> Res<File> {
    OpenOptions::new()
        .write(true)
        .open(p)
        .map_err(|e| format!("open {} for writing: {e}", p.display()))
}

/// Opens a FIFO for reading (blocks until there is a writer).
fn open_r(p: &Path) -> Res<File> {
    File::open(p).map_err(|e| format!("open {} for reading: {e}", p.display()))
}

fn open_nonblock(p: &Path, write: bool) -> Res<OwnedFd> {
    let mut o = OpenOptions::new();
    if write {
        o.write(true);
    } else {
        o.read(true);
    }
    o.custom_flags(libc::O_NONBLOCK)
        .open(p)
        .map(OwnedFd::from)
        .map_err(|e| format!("open {}: {e}", p.display()))
}

fn set_pipe_size(fd: RawFd, size: usize) {
    // SAFETY: fcntl on an fd we own.
    unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, size as libc::c_int) };
}

fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of a process, in seconds (from /proc/PID/stat).
fn proc_cpu(pid: i32) -> Res<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 2..])
        .ok_or("bad /proc stat")?;
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of stat; `after` starts at field 3.
    let ut: f64 = f.get(11).and_then(|s| s.parse().ok()).ok_or("utime")?;
    let st: f64 = f.get(12).and_then(|s| s.parse().ok()).ok_or("stime")?;
    Ok((ut + st) / clock_ticks())
}

/// A `Key:   N kB` (or plain count) line of /proc/PID/status.
fn proc_status(pid: i32, key: &str) -> Res<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no {key} in /proc/{pid}/status"))
}

// ---- Interference from other processes ----------------------------------------

/// This is a shared 2-core machine: a run during which other processes used
/// noticeable CPU is repeated (see `guarded`).
static RETRIED: AtomicI32 = AtomicI32::new(0);
static KEPT_NOISY: AtomicI32 = AtomicI32::new(0);

/// CPU seconds the whole machine spent busy, and this program with every
/// child it reaped (children's reaped descendants included).
#[derive(Clone, Copy)]
struct CpuSnap {
    machine: f64,
    ours: f64,
    at: Instant,
}

fn snap() -> CpuSnap {
    let machine = fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let l = s.lines().next()?.to_string();
            let v: Vec<f64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal
            let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?;
            Some(busy / clock_ticks())
        })
        .unwrap_or(0.0);
    let ru = |who| {
        // SAFETY: an all-zero rusage is valid; getrusage fills it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer.
        unsafe { libc::getrusage(who, &mut ru) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    };
    CpuSnap {
        machine,
        ours: ru(libc::RUSAGE_SELF) + ru(libc::RUSAGE_CHILDREN),
        at: Instant::now(),
    }
}

/// CPU seconds other processes used between two snapshots.
fn foreign(a: CpuSnap, b: CpuSnap) -> f64 {
    ((b.machine - a.machine) - (b.ours - a.ours)).max(0.0)
}

/// Waits (at most 60 s) until other processes leave the CPUs alone.
fn wait_quiet() {
    let end = Instant::now() + Duration::from_secs(60);
    let mut told = false;
    loop {
        let a = snap();
        thread::sleep(Duration::from_millis(200));
        let b = snap();
        let busy = foreign(a, b) / (b.at - a.at).as_secs_f64();
        if busy < 0.10 || Instant::now() > end {
            return;
        }
        if !told {
            eprintln!(
                "  (waiting for other processes to leave the CPUs: {:.0} % busy)",
                busy * 100.0
            );
            told = true;
        }
    }
}

/// Runs one measurement; repeats it (up to 3 times) when other processes
/// used more than 10 % of a CPU meanwhile.
fn guarded<T>(mut f: impl FnMut() -> Res<T>) -> Res<T> {
    let mut attempt = 0;
    loop {
        wait_quiet();
        let a = snap();
        let t = f()?;
        let b = snap();
        let other = foreign(a, b);
        let secs = (b.at - a.at).as_secs_f64();
        if other <= 0.10 * secs + 0.02 {
            return Ok(t);
        }
        if attempt == 3 {
            KEPT_NOISY.fetch_add(1, Ordering::SeqCst);
            eprintln!("  (kept although other processes used {other:.2} s of CPU)");
            return Ok(t);
        }
        RETRIED.fetch_add(1, Ordering::SeqCst);
        eprintln!("  (repeating: other processes used {other:.2} s of CPU during {secs:.2} s)");
        attempt += 1;
    }
}

// ---- Child processes -----------------------------------------------------------

struct Proc {
    pid: i32,
    name: String,
    /// What it wrote on stderr (fifod: its log).
    log: Arc<Mutex<String>>,
    /// fifod: when its `ready:` line arrived.
    ready: Option<mpsc::Receiver<Instant>>,
    /// Exit status and CPU seconds (user + system, children included) once
    /// reaped.
    reaped: Option<(i32, f64)>,
}

fn spawn(name: &str, cmd: &mut Command, watch_ready: bool) -> Res<Proc> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| format!("spawn {name}: {e}"))?;
    let pid = child.id() as i32;
    registry().groups.push(pid);
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    if let Some(stderr) = child.stderr.take() {
        let log = Arc::clone(&log);
        thread::spawn(move || {
            let mut told = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !told && watch_ready && line.contains("] ready: ") {
                    let _ = tx.send(Instant::now());
                    told = true;
                }
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                if log.len() < 1 << 20 {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
    }
    // The Child is dropped without waiting: reaping is done with wait4.
    drop(child);
    Ok(Proc {
        pid,
        name: name.to_string(),
        log,
        ready: watch_ready.then_some(rx),
        reaped: None,
    })
}

impl Proc {
    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reaps it if it exited; waits at most `within`.
    fn wait(&mut self, within: Duration) -> Option<(i32, f64)> {
        if self.reaped.is_some() {
            return self.reaped;
        }
        let end = Instant::now() + within;
        loop {
            let mut status = 0;
            // SAFETY: an all-zero rusage is valid; wait4 fills it.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: waits for our own child, with valid pointers.
            let r = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut ru) };
            if r == self.pid {
                let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
                let cpu = tv(ru.ru_utime) + tv(ru.ru_stime);
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                };
                registry().groups.retain(|&g| g != self.pid);
                self.reaped = Some((code, cpu));
                return self.reaped;
            }
            if r < 0 || Instant::now() >= end {
                return None;
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    fn signal(&self, sig: libc::c_int) {
        if self.reaped.is_none() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(self.pid, sig) };
        }
    }

    fn kill_group(&mut self) {
        if self.reaped.is_none() {
            // SAFETY: kill(2) on the process group our child leads.
            unsafe { libc::kill(-self.pid, libc::SIGKILL) };
            let _ = self.wait(Duration::from_secs(5));
        }
    }

    /// Waits for it to exit on its own (an alternative that saw EOF); kills
    /// it after `within`. Returns its CPU seconds.
    fn finish(mut self, within: Duration) -> Res<f64> {
        match self.wait(within) {
            Some((0, cpu)) => Ok(cpu),
            Some((code, _)) => Err(format!(
                "{} exited with {code}: {}",
                self.name,
                self.log().trim()
            )),
            None => {
                self.kill_group();
                Err(format!("{} did not exit within {within:?}", self.name))
            }
        }
    }

    /// SIGTERM, then waits for a clean exit (fifod drains first).
    fn stop(self) -> Res<f64> {
        self.signal(libc::SIGTERM);
        self.finish(Duration::from_secs(10))
    }
}

// ---- fifod -------------------------------------------------------------------

struct Fifod {
    proc_: Proc,
    /// From spawn to the `ready:` line.
    startup: Duration,
}

fn start_fifod(bin: &Path, dir: &Path, body: &str) -> Res<Fifod> {
    let run = dir.join("run");
    let config = dir.join("fifod.toml");
    let text = format!(
        "[daemon]\ndir = \"{}\"\nlog_level = \"info\"\nshutdown_timeout = \"2s\"\n{body}",
        run.display()
    );
    fs::write(&config, text).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let mut p = spawn(
        "fifod",
        Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG"),
        true,
    )?;
    let rx = p.ready.take().ok_or("no ready channel")?;
    let end = t0 + Duration::from_secs(30);
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(at) => {
                return Ok(Fifod {
                    startup: at - t0,
                    proc_: p,
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < end => {
                if let Some((code, _)) = p.wait(Duration::ZERO) {
                    return Err(format!(
                        "fifod exited with {code} before ready:\n{}",
                        p.log()
                    ));
                }
            }
            Err(_) => {
                p.kill_group();
                return Err(format!("fifod not ready within 30 s:\n{}", p.log()));
            }
        }
    }
}

impl Fifod {
    fn pid(&self) -> i32 {
        self.proc_.pid
    }

    /// Stops it and checks that the stop was clean; returns its CPU seconds.
    fn stop(self) -> Res<f64> {
        let log = Arc::clone(&self.proc_.log);
        let cpu = self.proc_.stop()?;
        // Let the log thread take the last lines.
        thread::sleep(Duration::from_millis(5));
        let log = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains(" ERROR ") || l.contains("undelivered (") || l.contains("dropped ")
            })
            .collect();
        if !bad.is_empty() {
            return Err(format!("fifod reported problems:\n{}", bad.join("\n")));
        }
        Ok(cpu)
    }
}

// ---- Writers and readers -------------------------------------------------------

/// A buffer of `len` bytes of varied content.
fn pattern(len: usize) -> Arc<Vec<u8>> {
    Arc::new((0..len).map(|i| (i * 31 % 251) as u8).collect())
}

/// Writes `total` bytes of `buf` (repeated) in IO_CHUNK writes, then closes.
fn write_all_from(mut f: File, buf: &[u8], total: u64) -> Res<()> {
    let mut left = total;
    let mut at = 0usize;
    while left > 0 {
        let n = (IO_CHUNK as u64).min(left) as usize;
        let n = n.min(buf.len() - at);
        f.write_all(&buf[at..at + n])
            .map_err(|e| format!("write: {e}"))?;
        left -= n as u64;
        at = (at + n) % buf.len();
    }
    Ok(())
}

/// What a reader saw.
#[derive(Default, Clone, Copy)]
struct ReadStats {
    bytes: u64,
    /// Line workload: places where a line of one writer continues with
    /// another writer's bytes.
    torn: u64,
}

/// Reads until `total` bytes or EOF; with `lines`, counts torn lines.
fn read_count(mut f: File, total: u64, lines: bool) -> Res<(ReadStats, Instant)> {
    let mut buf = vec![0u8; IO_CHUNK];
    let mut st = ReadStats::default();
    let mut prev = b'\n';
    while st.bytes < total {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read: {e}")),
        };
        if lines {
            st.torn += torn_in(prev, &buf[..n]);
            prev = buf[n - 1];
        }
        st.bytes += n as u64;
    }
    Ok((st, Instant::now()))
}

/// Line workload: each writer fills its lines with its own letter, so a
/// change of letter not at a newline is a torn line.
fn torn_in(prev: u8, b: &[u8]) -> u64 {
    let edge = |x: u8, y: u8| u32::from((x != y) & (x != b'\n') & (y != b'\n'));
    let mut torn = u64::from(edge(prev, b[0]));
    let (xs, ys) = (&b[..b.len() - 1], &b[1..]);
    for (cx, cy) in xs.chunks(1 << 16).zip(ys.chunks(1 << 16)) {
        torn += u64::from(cx.iter().zip(cy).map(|(&x, &y)| edge(x, y)).sum::<u32>());
    }
    torn
}

/// One transfer: writers and readers as threads, the clock started once all
/// of them have their FIFO open, stopped when the last reader has its bytes.
struct Transfer {
    writers: Vec<(PathBuf, Arc<Vec<u8>>, u64)>,
    readers: Vec<(PathBuf, u64)>,
    lines: bool,
    pipe_size: Option<usize>,
}

struct Moved {
    secs: f64,
    /// Bytes the writers wrote.
    bytes: u64,
    torn: u64,
}

impl Transfer {
    fn run(self) -> Res<Moved> {
        let parties = self.writers.len() + self.readers.len() + 1;
        let barrier = Arc::new(Barrier::new(parties));
        let lines = self.lines;
        let mut wh = Vec::new();
        let bytes: u64 = self.writers.iter().map(|w| w.2).sum();
        let pipe_size = self.pipe_size;
        for (path, buf, total) in self.writers {
            let b = Arc::clone(&barrier);
            wh.push(thread::spawn(move || -> Res<()> {
                let f = open_w(&path);
                if let (Ok(f), Some(sz)) = (&f, pipe_size) {
                    set_pipe_size(f.as_raw_fd(), sz);
                }
                b.wait();
                write_all_from(f?, &buf, total)
            }));
        }
        let mut rh = Vec::new();
        for (path, total) in self.readers {
            let b = Arc::clone(&barrier);
            rh.push(thread::spawn(move || -> Res<(ReadStats, Instant, u64)> {
                let f = open_r(&path);
                b.wait();
                let (st, at) = read_count(f?, total, lines)?;
                Ok((st, at, total))
            }));
        }
        barrier.wait();
        let t0 = Instant::now();
        let mut last = t0;
        let mut torn = 0;
        let mut errors = Vec::new();
        for h in rh {
            match h.join() {
                Ok(Ok((st, at, total))) => {
                    if st.bytes != total {
                        errors.push(format!("reader got {} of {total} bytes", st.bytes));
                    }
                    torn += st.torn;
                    last = last.max(at);
                }
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push("reader panicked".into()),
            }
        }
        for h in wh {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push("writer panicked".into()),
            }
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(Moved {
            secs: (last - t0).as_secs_f64(),
            bytes,
            torn,
        })
    }
}

// ---- Results -------------------------------------------------------------------

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Samples of one metric per variant, in the order variants were added.
#[derive(Default)]
struct Samples {
    order: Vec<String>,
    values: BTreeMap<String, Vec<f64>>,
    /// Extra per-variant samples (relay CPU seconds, torn lines...).
    extra: BTreeMap<(String, &'static str), Vec<f64>>,
}

impl Samples {
    fn push(&mut self, variant: &str, v: f64) {
        if !self.values.contains_key(variant) {
            self.order.push(variant.to_string());
        }
        self.values.entry(variant.to_string()).or_default().push(v);
    }
    fn push_extra(&mut self, variant: &str, key: &'static str, v: f64) {
        self.extra
            .entry((variant.to_string(), key))
            .or_default()
            .push(v);
    }
    fn med(&self, variant: &str) -> f64 {
        self.values.get(variant).map_or(f64::NAN, |v| median(v))
    }
    fn med_extra(&self, variant: &str, key: &'static str) -> f64 {
        self.extra
            .get(&(variant.to_string(), key))
            .map_or(f64::NAN, |v| median(v))
    }
    fn range(&self, variant: &str) -> (f64, f64) {
        let v = self.values.get(variant).cloned().unwrap_or_default();
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo, hi)
    }
}

/// The report, built as the workloads run and printed at the end.
#[derive(Default)]
struct Report {
    text: String,
    /// Named medians the targets are checked against.
    facts: BTreeMap<String, f64>,
    /// Prefix of the facts of the CPU mode being run.
    prefix: String,
}

impl Report {
    fn fact(&mut self, key: &str, v: f64) {
        self.facts.insert(format!("{}{key}", self.prefix), v);
    }
}

fn gibs(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / GIB as f64 / secs
}

/// A throughput table: median GiB/s, min–max, relay CPU, and the ratio of
/// `reference` (fifod) to each row.
fn throughput_table(r: &mut Report, title: &str, s: &Samples, reference: &str, note: &str) {
    let _ = writeln!(r.text, "\n### {title}\n");
    if !note.is_empty() {
        let _ = writeln!(r.text, "{note}\n");
    }
    let _ = writeln!(
        r.text,
        "| variant | median GiB/s | min – max | relay CPU s (median) | {reference} ÷ variant |"
    );
    let _ = writeln!(r.text, "| --- | ---: | ---: | ---: | ---: |");
    let base = s.med(reference);
    for v in &s.order {
        let m = s.med(v);
        let (lo, hi) = s.range(v);
        let cpu = s.med_extra(v, "cpu");
        let torn = s.med_extra(v, "torn");
        let torn = if torn.is_nan() {
            String::new()
        } else if torn == 0.0 {
            " (lines whole)".to_string()
        } else {
            format!(" ({torn:.0} torn lines)")
        };
        let cpu = if cpu.is_nan() {
            "–".to_string()
        } else {
            format!("{cpu:.2}")
        };
        let ratio = if v == reference {
            "1.00".to_string()
        } else {
            format!("{:.2}×", base / m)
        };
        let _ = writeln!(
            r.text,
            "| {}{torn} | {m:.2} | {lo:.2} – {hi:.2} | {cpu} | {ratio} |",
            v.replace('|', "\\|")
        );
    }
}

// ---- Options -------------------------------------------------------------------

struct Opts {
    fifod: PathBuf,
    socat: String,
    runs: usize,
    quick: bool,
    idle_secs: u64,
    only: Vec<String>,
    tmp: PathBuf,
}

impl Opts {
    fn size(&self, full: u64) -> u64 {
        if self.quick { full / 32 } else { full }
    }
    fn wants(&self, w: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == w)
    }
    /// A fresh, empty directory for one run.
    fn fresh(&self, name: &str) -> Res<PathBuf> {
        let d = self.tmp.join(name);
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        Ok(d)
    }
}

fn opts() -> Res<Opts> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fifod = std::env::var_os("FIFOD_BIN")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_BIN_EXE_fifod").map(PathBuf::from))
        .unwrap_or_else(|| here.join("target/release/fifod"));
    if !fifod.is_file() {
        return Err(format!(
            "no fifod at {} (build it with `cargo build --release` or set FIFOD_BIN)",
            fifod.display()
        ));
    }
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let runs = match std::env::var("BENCH_RUNS") {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("BENCH_RUNS={v}: not a number"))?,
        Err(_) if quick => 1,
        Err(_) => 5,
    };
    let idle_secs = match std::env::var("BENCH_IDLE_SECS") {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("BENCH_IDLE_SECS={v}: not a number"))?,
        Err(_) if quick => 1,
        Err(_) => 10,
    };
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // fifod's FIFOs live in /run (a tmpfs) on real systems: prefer a tmpfs
    // here too, since creating thousands of nodes on a disk filesystem
    // measures the filesystem, not fifod.
    let base = std::env::var_os("BENCH_TMPDIR")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| p.is_dir()))
        .unwrap_or_else(std::env::temp_dir);
    let tmp = base.join(format!("fifod-bench.{}.{nanos}", std::process::id()));
    fs::create_dir(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700)).map_err(|e| e.to_string())?;
    registry().dir = Some(tmp.clone());
    Ok(Opts {
        fifod,
        socat: std::env::var("SOCAT").unwrap_or_else(|_| "socat".into()),
        runs: runs.max(1),
        quick,
        idle_secs,
        only,
        tmp,
    })
}

// ---- Workload runners ---------------------------------------------------------

/// How a relay variant is set up around the harness's FIFOs.
enum Relay {
    /// fifod with this config body (FIFOs and routes); the FIFOs are under
    /// `<dir>/run`.
    Fifod(String),
    /// A command started before the transfer, with `{d}` in its arguments
    /// replaced by the directory of the FIFOs (which the harness makes).
    Cmd(Vec<String>),
    /// No relay: writers and readers share the FIFOs.
    Direct,
}

fn sh(script: &str) -> Relay {
    Relay::Cmd(vec!["sh".into(), "-c".into(), script.into()])
}

/// Runs one transfer through `relay`. `fifos` are the FIFO names the
/// harness makes for non-fifod variants; writers/readers name their FIFO.
fn run_transfer(
    o: &Opts,
    relay: &Relay,
    fifos: &[&str],
    writers: &[(&str, Arc<Vec<u8>>, u64)],
    readers: &[(&str, u64)],
    lines: bool,
    pipe_size: Option<usize>,
) -> Res<(Moved, f64)> {
    let dir = o.fresh("run")?;
    let fifo_dir = match relay {
        Relay::Fifod(_) => dir.join("run"),
        _ => dir.join("f"),
    };
    let mut proc_ = None;
    let mut fifod = None;
    match relay {
        Relay::Fifod(body) => fifod = Some(start_fifod(&o.fifod, &dir, body)?),
        Relay::Cmd(argv) => {
            fs::create_dir(&fifo_dir).map_err(|e| e.to_string())?;
            for f in fifos {
                mkfifo(&fifo_dir.join(f))?;
            }
            let d = fifo_dir.display().to_string();
            let argv: Vec<String> = argv.iter().map(|a| a.replace("{d}", &d)).collect();
            let prog = if argv[0] == "socat" {
                &o.socat
            } else {
                &argv[0]
            };
            proc_ = Some(spawn(&argv[0], Command::new(prog).args(&argv[1..]), false)?);
        }
        Relay::Direct => {
            fs::create_dir(&fifo_dir).map_err(|e| e.to_string())?;
            for f in fifos {
                mkfifo(&fifo_dir.join(f))?;
            }
        }
    }
    let t = Transfer {
        writers: writers
            .iter()
            .map(|(n, b, t)| (fifo_dir.join(n), Arc::clone(b), *t))
            .collect(),
        readers: readers
            .iter()
            .map(|(n, t)| (fifo_dir.join(n), *t))
            .collect(),
        lines,
        pipe_size,
    };
    let moved = t.run();
    let cpu = match (fifod, proc_) {
        (Some(f), _) => f.stop(),
        (_, Some(p)) => p.finish(Duration::from_secs(10)),
        _ => Ok(f64::NAN),
    };
    let _ = fs::remove_dir_all(&dir);
    let moved = moved?;
    Ok((moved, cpu?))
}

/// Runs every variant `o.runs` times (interleaved), collecting GiB/s.
#[allow(clippy::type_complexity)]
fn throughput_workload(
    o: &Opts,
    label: &str,
    variants: &[(&str, Relay, Option<usize>)],
    fifos: &[&str],
    writers: &[(&str, Arc<Vec<u8>>, u64)],
    readers: &[(&str, u64)],
    lines: bool,
) -> Res<Samples> {
    let mut s = Samples::default();
    let bytes: u64 = writers.iter().map(|w| w.2).sum();
    for rep in 0..o.runs {
        for (name, relay, pipe_size) in variants {
            let (m, cpu) = guarded(|| {
                deadline(
                    Duration::from_secs(30) + Duration::from_secs(bytes / (64 * MIB)),
                    &format!("{label} / {name}"),
                );
                run_transfer(o, relay, fifos, writers, readers, lines, *pipe_size)
            })
            .map_err(|e| format!("{label} / {name}: {e}"))?;
            clear_deadline();
            let g = gibs(m.bytes, m.secs);
            eprintln!(
                "  [{label} run {}/{}] {name}: {g:.2} GiB/s ({:.2} s, relay CPU {cpu:.2} s{})",
                rep + 1,
                o.runs,
                m.secs,
                if lines {
                    format!(", torn lines {}", m.torn)
                } else {
                    String::new()
                }
            );
            s.push(name, g);
            s.push_extra(name, "cpu", cpu);
            if lines {
                s.push_extra(name, "torn", m.torn as f64);
            }
        }
    }
    Ok(s)
}

fn fifod_body(fifos: &[&str], routes: &[(&[&str], &[&str])], extra_daemon: &str) -> String {
    let mut b = String::new();
    let _ = writeln!(b, "{extra_daemon}");
    for f in fifos {
        let _ = writeln!(b, "[fifo.{f}]");
    }
    for (from, to) in routes {
        let q = |v: &[&str]| {
            v.iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(b, "[[route]]\nfrom = [{}]\nto = [{}]", q(from), q(to));
    }
    b
}

fn w1(o: &Opts, r: &mut Report) -> Res<()> {
    let size = o.size(4 * GIB);
    eprintln!("== 1: 1 -> 1 bytes, {} MiB", size / MIB);
    let body = |ps: &str| fifod_body(&["in", "out"], &[(&["in"], &["out"])], ps);
    let variants = [
        ("fifod", Relay::Fifod(body("")), None),
        (
            "fifod pipe_size=64KiB",
            Relay::Fifod(body("pipe_size = \"64KiB\"")),
            None,
        ),
        (
            "socat -u",
            Relay::Cmd(
                ["socat", "-u", "OPEN:{d}/in,rdonly", "OPEN:{d}/out,wronly"]
                    .map(String::from)
                    .to_vec(),
            ),
            None,
        ),
        ("cat", sh("cat {d}/in > {d}/out"), None),
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
         F_SETPIPE_SZ to 1 MiB.",
    );
    r.fact("w1_fifod", s.med("fifod"));
    r.fact("w1_fifod_64k", s.med("fifod pipe_size=64KiB"));
    r.fact("w1_socat", s.med("socat -u"));
    r.fact("w1_cat", s.med("cat"));
    r.fact("w1_direct", s.med("direct FIFO (no relay)"));
    r.fact("w1_direct_1m", s.med("direct FIFO, 1 MiB pipe"));
    Ok(())
}

fn w2(o: &Opts, r: &mut Report) -> Res<()> {
    let size = o.size(GIB);
    eprintln!("== 2: 1 -> 3 fan-out, {} MiB", size / MIB);
    let fifos = ["in", "out1", "out2", "out3"];
    let body = |ps: &str| fifod_body(&fifos, &[(&["in"], &["out1", "out2", "out3"])], ps);
    let variants = [
        ("fifod", Relay::Fifod(body("")), None),
        (
            "fifod pipe_size=64KiB",
            Relay::Fifod(body("pipe_size = \"64KiB\"")),
            None,
        ),
        (
            "coreutils tee",
            sh("tee {d}/out1 {d}/out2 < {d}/in > {d}/out3"),
            None,
        ),
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
        "GiB/s of input; every one of the three readers gets every byte.",
    );
    r.fact("w2_fifod", s.med("fifod"));
    r.fact("w2_tee", s.med("coreutils tee"));
    Ok(())
}

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

fn w3(o: &Opts, r: &mut Report) -> Res<()> {
    let total = o.size(GIB);
    eprintln!("== 3: 4 -> 1 lines, {} MiB", total / MIB);
    let fifos = ["in1", "in2", "in3", "in4", "out"];
    let ins = ["in1", "in2", "in3", "in4"];
    let lines_body = format!(
        "{}framing = \"lines\"\n",
        fifod_body(&fifos, &[(&ins, &["out"])], "")
    );
    let socat = |i: usize| format!("socat -u OPEN:{{d}}/in{i},rdonly OPEN:{{d}}/out,wronly");
    let variants = [
        ("fifod lines", Relay::Fifod(lines_body), None),
        (
            "fifod bytes",
            Relay::Fifod(fifod_body(&fifos, &[(&ins, &["out"])], "")),
            None,
        ),
        (
            "4 × socat -u",
            sh(&format!(
                "{} & {} & {} & {} & wait",
                socat(1),
                socat(2),
                socat(3),
                socat(4)
            )),
            None,
        ),
        (
            "4 × cat",
            sh("cat {d}/in1 > {d}/out & cat {d}/in2 > {d}/out & \
                cat {d}/in3 > {d}/out & cat {d}/in4 > {d}/out & wait"),
            None,
        ),
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

/// Ping-pong of 64-byte messages: A writes `a_out`, B reads `b_in`, writes
/// `b_out`, A reads `a_in`. Returns round trips in microseconds.
fn ping_pong(a_out: &Path, b_in: &Path, b_out: &Path, a_in: &Path, n: usize) -> Res<Vec<f64>> {
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

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn w4(o: &Opts, r: &mut Report) -> Res<()> {
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
                                Command::new(&o.socat).args([
                                    "-u",
                                    &format!("OPEN:{},rdonly", d.join(from).display()),
                                    &format!("OPEN:{},wronly", d.join(to).display()),
                                ]),
                                false,
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

/// Writes `each` bytes into every fd (non-blocking, one poll loop).
fn pump_writes(fds: Vec<OwnedFd>, each: u64, buf: &[u8]) -> Res<()> {
    let mut left: Vec<u64> = vec![each; fds.len()];
    let end = Instant::now() + Duration::from_secs(120);
    let index: BTreeMap<RawFd, usize> = fds
        .iter()
        .enumerate()
        .map(|(i, f)| (f.as_raw_fd(), i))
        .collect();
    loop {
        let mut pfds: Vec<libc::pollfd> = fds
            .iter()
            .zip(&left)
            .filter(|(_, l)| **l > 0)
            .map(|(f, _)| libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        if pfds.is_empty() {
            return Ok(());
        }
        if Instant::now() > end {
            return Err("writers: deadline".into());
        }
        // SAFETY: pfds is a valid array of pollfd.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 1000) };
        if r < 0 {
            continue;
        }
        for p in pfds.iter().filter(|p| p.revents != 0) {
            let i = index[&p.fd];
            let n = left[i].min(buf.len() as u64) as usize;
            // SAFETY: writes from a live buffer to an fd we own.
            let w = unsafe { libc::write(p.fd, buf.as_ptr().cast(), n) };
            if w > 0 {
                left[i] -= w as u64;
            } else if w < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN)
            {
                return Err(format!("write: {}", std::io::Error::last_os_error()));
            }
        }
    }
}

/// Reads `each` bytes from every fd (non-blocking, one poll loop).
fn pump_reads(fds: Vec<OwnedFd>, each: u64) -> Res<()> {
    let mut got: Vec<u64> = vec![0; fds.len()];
    let mut buf = vec![0u8; 64 * 1024];
    let end = Instant::now() + Duration::from_secs(120);
    let index: BTreeMap<RawFd, usize> = fds
        .iter()
        .enumerate()
        .map(|(i, f)| (f.as_raw_fd(), i))
        .collect();
    loop {
        let mut pfds: Vec<libc::pollfd> = fds
            .iter()
            .zip(&got)
            .filter(|(_, g)| **g < each)
            .map(|(f, _)| libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if pfds.is_empty() {
            return Ok(());
        }
        if Instant::now() > end {
            return Err("readers: deadline".into());
        }
        // SAFETY: pfds is a valid array of pollfd.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 1000) };
        if r < 0 {
            continue;
        }
        for p in pfds.iter().filter(|p| p.revents != 0) {
            let i = index[&p.fd];
            // SAFETY: reads into a live buffer from an fd we own.
            let n = unsafe { libc::read(p.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                got[i] += n as u64;
            } else if n == 0 {
                return Err("unexpected EOF on an output".into());
            }
        }
        if got.iter().any(|&g| g > each) {
            return Err("a reader got more than was written".into());
        }
    }
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

fn w5(o: &Opts, r: &mut Report) -> Res<()> {
    let pairs: usize = std::env::var("BENCH_SCALE_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let each = if o.quick { 64 * KIB } else { MIB };
    eprintln!("== 5: scale, {pairs} routes ({} FIFOs)", 2 * pairs);
    let mut body = String::new();
    for i in 0..pairs {
        let _ = writeln!(
            body,
            "[fifo.in{i}]\n[fifo.out{i}]\n[[route]]\nfrom = [\"in{i}\"]\nto = [\"out{i}\"]"
        );
    }
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

fn w6(o: &Opts, r: &mut Report) -> Res<()> {
    let size = o.size(2 * GIB);
    eprintln!("== 6: FIFO -> cat -> FIFO, {} MiB", size / MIB);
    let body = "[fifo.in]\n[fifo.out]\n[process.cat]\ncommand = [\"cat\"]\n\
                [[route]]\nfrom = [\"in\"]\nto = [\"cat\"]\n\
                [[route]]\nfrom = [\"cat\"]\nto = [\"out\"]\n";
    let variants = [
        ("fifod + cat", Relay::Fifod(body.to_string()), None),
        ("cat in | cat > out", sh("cat {d}/in | cat > {d}/out"), None),
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

fn targets(r: &mut Report) {
    let f = |k: &str| {
        r.facts
            .get(&format!("{}{k}", r.prefix))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let mut rows: Vec<(String, String, bool)> = Vec::new();
    let mut check = |name: &str, got: String, ok: bool| rows.push((name.into(), got, ok));
    if !f("w1_fifod").is_nan() {
        let x = f("w1_fifod") / f("w1_socat");
        check(
            "1→1 ≥ 3× socat",
            format!(
                "{:.2} vs {:.2} GiB/s = {x:.2}×",
                f("w1_fifod"),
                f("w1_socat")
            ),
            x >= 3.0,
        );
        let y = f("w1_fifod") / f("w1_direct");
        check(
            "1→1 ≥ direct FIFO (default pipe size)",
            format!(
                "{:.2} vs {:.2} GiB/s = {y:.2}×",
                f("w1_fifod"),
                f("w1_direct")
            ),
            y >= 1.0,
        );
    }
    if !f("w2_fifod").is_nan() {
        let x = f("w2_fifod") / f("w2_tee");
        check(
            "1→3 ≥ 5× coreutils tee",
            format!("{:.2} vs {:.2} GiB/s = {x:.2}×", f("w2_fifod"), f("w2_tee")),
            x >= 5.0,
        );
    }
    if !f("w3_fifod_lines").is_nan() {
        if !f("w1_socat").is_nan() {
            let x = f("w3_fifod_lines") / f("w1_socat");
            check(
                "lines 4→1 ≥ socat 1→1 bytes",
                format!(
                    "{:.2} vs {:.2} GiB/s = {x:.2}×",
                    f("w3_fifod_lines"),
                    f("w1_socat")
                ),
                x >= 1.0,
            );
        }
        check(
            "lines 4→1 keep lines whole",
            format!("{:.0} torn lines", f("w3_fifod_lines_torn")),
            f("w3_fifod_lines_torn") == 0.0,
        );
    }
    if !f("w4_fifod_p99").is_nan() {
        let x = f("w4_fifod_p99") / f("w4_direct_p99");
        check(
            "latency p99 ≤ 1.5× direct",
            format!(
                "{:.1} vs {:.1} µs = {x:.2}×",
                f("w4_fifod_p99"),
                f("w4_direct_p99")
            ),
            x <= 1.5,
        );
        check(
            "latency p99 < socat",
            format!("{:.1} vs {:.1} µs", f("w4_fifod_p99"), f("w4_socat_p99")),
            f("w4_fifod_p99") < f("w4_socat_p99"),
        );
    }
    if !f("w5_ready_ms").is_nan() {
        check(
            "1,000 routes READY < 1 s",
            format!("{:.1} ms", f("w5_ready_ms")),
            f("w5_ready_ms") < 1000.0,
        );
        check(
            "1,000 routes < 32 MiB resident",
            format!("{:.1} MiB", f("w5_rss")),
            f("w5_rss") < 32.0,
        );
        check(
            "no CPU while idle",
            format!(
                "{:.2} s CPU, {:.0} context switches",
                f("w5_idle_cpu"),
                f("w5_idle_cs")
            ),
            f("w5_idle_cpu") == 0.0 && f("w5_idle_cs") == 0.0,
        );
    }
    let _ = writeln!(r.text, "\n### Targets\n");
    let _ = writeln!(r.text, "| target | measured | |");
    let _ = writeln!(r.text, "| --- | --- | --- |");
    for (name, got, ok) in rows {
        let _ = writeln!(
            r.text,
            "| {name} | {got} | {} |",
            if ok { "met" } else { "MISSED" }
        );
    }
}

/// The CPUs this program may run on.
fn affinity() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is valid; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer and size.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return vec![0];
    }
    // SAFETY: CPU_ISSET reads the set.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Pins the main thread, hence every thread and process it starts from now
/// on, to `cpus`.
fn set_affinity(cpus: &[usize]) -> Result<(), ()> {
    // SAFETY: an all-zero cpu_set_t is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: c < CPU_SETSIZE (it came from affinity()).
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: valid pointer and size.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r == 0 { Ok(()) } else { Err(()) }
}

/// The CPU placements to run every workload in (`BENCH_CPUS`: `both`, the
/// default, `all` or `one`).
fn cpu_modes(all: &[usize]) -> Vec<(String, Vec<usize>)> {
    let every = (
        format!("{} CPUs, placement left to the scheduler", all.len()),
        all.to_vec(),
    );
    let one = (
        format!("1 CPU: everything pinned to CPU {}", all[0]),
        vec![all[0]],
    );
    match std::env::var("BENCH_CPUS").as_deref() {
        Ok("all") => vec![every],
        Ok("one") => vec![one],
        _ if all.len() == 1 => vec![one],
        _ => vec![every, one],
    }
}

/// The machine and the tools, for the report.
fn machine(fifod: &Path) -> String {
    let first = |cmd: &str, args: &[&str], line: usize| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .nth(line)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "?".into())
    };
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("?", |m| m.trim_start_matches([' ', '\t', ':']));
    let mem = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")
                .map(str::trim)
                .map(str::to_string)
        })
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "- CPUs: {} × {model}\n- memory: {mem}\n- kernel: {}\n- {}\n- {}\n- {}\n",
        affinity().len(),
        kernel.trim(),
        first("socat", &["-V"], 1).trim(),
        first("tee", &["--version"], 0),
        first(&fifod.display().to_string(), &["--version"], 0),
    )
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // binary without it, and must not start a ten-minute benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("relay: not run as a benchmark; use `cargo bench --bench relay`");
        return;
    }
    raise_nofile();
    start_watchdog();
    let o = match opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e}");
            cleanup_all();
            std::process::exit(2);
        }
    };
    eprintln!(
        "fifod: {}\nruns: {}{}\ntemp: {}",
        o.fifod.display(),
        o.runs,
        if o.quick { " (QUICK: sizes / 32)" } else { "" },
        o.tmp.display()
    );
    let started = Instant::now();
    let mut r = Report::default();
    let _ = writeln!(
        r.text,
        "## Results ({} runs per measurement{})",
        o.runs,
        if o.quick { ", QUICK sizes" } else { "" }
    );
    type Workload = fn(&Opts, &mut Report) -> Res<()>;
    let all: [(&str, Workload); 6] = [
        ("w1", w1),
        ("w2", w2),
        ("w3", w3),
        ("w4", w4),
        ("w5", w5),
        ("w6", w6),
    ];
    let _ = writeln!(r.text, "\n{}", machine(&o.fifod));
    let mut failed = false;
    let original = affinity();
    for (mode, cpus) in cpu_modes(&original) {
        if set_affinity(&cpus).is_err() {
            eprintln!("bench: cannot set the CPU affinity for {mode}; skipped");
            continue;
        }
        eprintln!("\n######## {mode}");
        let _ = writeln!(r.text, "\n## {mode}");
        r.prefix = format!("{mode}:");
        let first = r.facts.is_empty();
        for (name, w) in all {
            // Start-up, memory and idle cost do not depend on placement:
            // the scale workload runs in the first mode only.
            if !o.wants(name) || (name == "w5" && !first) {
                continue;
            }
            if let Err(e) = w(&o, &mut r) {
                eprintln!("bench: {e}");
                let _ = writeln!(r.text, "\n**{name} FAILED:** {e}");
                failed = true;
                clear_deadline();
            }
        }
        targets(&mut r);
    }
    let _ = set_affinity(&original);
    let _ = writeln!(
        r.text,
        "\nRuns repeated because other processes used over 10 % of a CPU meanwhile: {}; \
         kept after 3 repeats anyway: {}.",
        RETRIED.load(Ordering::SeqCst),
        KEPT_NOISY.load(Ordering::SeqCst)
    );
    let _ = writeln!(
        r.text,
        "\nTotal bench time: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    println!("{}", r.text);
    cleanup_all();
    if failed {
        std::process::exit(1);
    }
}
