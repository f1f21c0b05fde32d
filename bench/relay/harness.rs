//! The harness: options, repetition of a measurement that other processes
//! disturbed, and the CPU placements every workload runs in.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::sys::machine_busy;
use crate::watchdog::registry;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;
/// Size of every write and read of the harness's writers and readers (the
/// size `cat` uses).
pub const IO_CHUNK: usize = 128 * 1024;

pub type Res<T> = Result<T, String>;

// ---- Options -------------------------------------------------------------------

pub struct Opts {
    pub fifod: PathBuf,
    pub socat: String,
    pub runs: usize,
    pub quick: bool,
    pub idle_secs: u64,
    pub only: Vec<String>,
    pub tmp: PathBuf,
}

impl Opts {
    pub fn size(&self, full: u64) -> u64 {
        if self.quick { full / 32 } else { full }
    }
    /// Whether the workload `id` (`w1` …), also called `name`, was asked
    /// for (all are, when none is named).
    pub fn wants(&self, id: &str, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == id || o == name)
    }
    /// A fresh, empty directory for one run.
    pub fn fresh(&self, name: &str) -> Res<PathBuf> {
        let d = self.tmp.join(name);
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        Ok(d)
    }
}

pub fn opts() -> Res<Opts> {
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

// ---- Interference from other processes ----------------------------------------

/// This is a shared 2-core machine: a run during which other processes used
/// noticeable CPU is repeated (see `guarded`).
pub static RETRIED: AtomicI32 = AtomicI32::new(0);
pub static KEPT_NOISY: AtomicI32 = AtomicI32::new(0);

/// CPU seconds the whole machine spent busy, and this program with every
/// child it reaped (children's reaped descendants included).
#[derive(Clone, Copy)]
struct CpuSnap {
    machine: f64,
    ours: f64,
    at: Instant,
}

fn snap() -> CpuSnap {
    let ru = |who| {
        // SAFETY: an all-zero rusage is valid; getrusage fills it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer.
        unsafe { libc::getrusage(who, &mut ru) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    };
    CpuSnap {
        machine: machine_busy(),
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
pub fn guarded<T>(mut f: impl FnMut() -> Res<T>) -> Res<T> {
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

// ---- CPU placements ------------------------------------------------------------

/// The CPU placements to run every workload in (`BENCH_CPUS`: `both`, the
/// default, `all` or `one`).
pub fn cpu_modes(all: &[usize]) -> Vec<(String, Vec<usize>)> {
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
