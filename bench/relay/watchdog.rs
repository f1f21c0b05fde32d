//! Cleanup, deadlines and signals: whatever happens, every process the
//! harness started dies and the temporary directory goes.

use std::fs;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Everything that must go if the harness stops early.
pub struct Registry {
    /// Process groups of the children (each child leads its own group).
    pub groups: Vec<i32>,
    /// The temporary directory.
    pub dir: Option<PathBuf>,
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

pub fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNALLED.store(sig, Ordering::SeqCst);
}

/// Kills every registered process group and removes the temporary directory.
pub fn cleanup_all() {
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

pub fn start_watchdog() {
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
pub fn deadline(within: Duration, what: &str) {
    registry().deadline = Some((Instant::now() + within, what.to_string()));
}

pub fn clear_deadline() {
    registry().deadline = None;
}
