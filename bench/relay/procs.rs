//! Child processes: each leads its own process group (the watchdog kills
//! groups), its stderr is kept, and it is reaped with wait4 for its CPU time.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::Res;
use crate::watchdog::registry;

/// How much of a child's stderr is kept.
const LOG_CAP: usize = 1 << 20;

pub struct Proc {
    pub pid: i32,
    name: String,
    /// What it wrote on stderr (fifod: its log), up to LOG_CAP.
    pub log: Arc<Mutex<String>>,
    /// Lines that name a problem (fifod: errors, drops, undelivered bytes),
    /// all of them, past LOG_CAP too.
    pub problems: Arc<Mutex<Vec<String>>>,
    /// fifod: when each line containing one of the `marks` given to `spawn`
    /// arrived, and the line.
    pub marks: Option<mpsc::Receiver<(Instant, String)>>,
    /// Exit status and CPU seconds (user + system, children included) once
    /// reaped.
    reaped: Option<(i32, f64)>,
}

/// Whether a line of fifod's log reports a problem.
pub fn is_problem(line: &str) -> bool {
    line.contains(" ERROR ") || line.contains("undelivered (") || line.contains("dropped ")
}

/// Starts `cmd` as `name`; every stderr line containing one of `marks` is
/// sent, with when it arrived, to `Proc::marks`.
pub fn spawn(name: &str, cmd: &mut Command, marks: &'static [&'static str]) -> Res<Proc> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| format!("spawn {name}: {e}"))?;
    let pid = child.id() as i32;
    registry().groups.push(pid);
    let log = Arc::new(Mutex::new(String::new()));
    let problems = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    if let Some(stderr) = child.stderr.take() {
        let log = Arc::clone(&log);
        let problems = Arc::clone(&problems);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if marks.iter().any(|m| line.contains(m)) {
                    let _ = tx.send((Instant::now(), line.clone()));
                }
                if is_problem(&line) {
                    problems
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(line.clone());
                }
                let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                if log.len() < LOG_CAP {
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
        problems,
        marks: (!marks.is_empty()).then_some(rx),
        reaped: None,
    })
}

impl Proc {
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reaps it if it exited; waits at most `within`.
    pub fn wait(&mut self, within: Duration) -> Option<(i32, f64)> {
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

    pub fn signal(&self, sig: libc::c_int) {
        if self.reaped.is_none() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(self.pid, sig) };
        }
    }

    pub fn kill_group(&mut self) {
        if self.reaped.is_none() {
            // SAFETY: kill(2) on the process group our child leads.
            unsafe { libc::kill(-self.pid, libc::SIGKILL) };
            let _ = self.wait(Duration::from_secs(5));
        }
    }

    /// Waits for it to exit on its own (an alternative that saw EOF); kills
    /// it after `within`. Returns its CPU seconds.
    pub fn finish(mut self, within: Duration) -> Res<f64> {
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
    pub fn stop(self) -> Res<f64> {
        self.signal(libc::SIGTERM);
        self.finish(Duration::from_secs(10))
    }
}
