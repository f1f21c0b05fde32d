//! fifod: its config, its start (timed to the log's `ready:` line), its log
//! marks, and a stop that must be clean.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::Res;
use crate::procs::{Proc, spawn};

/// The log lines the harness times: the start, and the end of a reload.
const MARKS: &[&str] = &["] ready: ", "] reload complete", "] reload failed"];

pub struct Fifod {
    proc_: Proc,
    /// From spawn to the `ready:` line.
    pub startup: Duration,
    /// The config file (a reload rewrites it).
    pub config: PathBuf,
}

/// The whole config file for `body` (FIFOs, routes, processes), with the
/// FIFOs under `<dir>/run`.
pub fn config_text(dir: &Path, body: &str) -> String {
    format!(
        "[daemon]\ndir = \"{}\"\nlog_level = \"info\"\nshutdown_timeout = \"2s\"\n{body}",
        dir.join("run").display()
    )
}

pub fn start_fifod(bin: &Path, dir: &Path, body: &str) -> Res<Fifod> {
    let config = dir.join("fifod.toml");
    fs::write(&config, config_text(dir, body)).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let mut p = spawn(
        "fifod",
        Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG"),
        MARKS,
    )?;
    let end = t0 + Duration::from_secs(30);
    loop {
        match p
            .marks
            .as_ref()
            .ok_or("no log marks")?
            .recv_timeout(Duration::from_millis(20))
        {
            Ok((at, line)) if line.contains(MARKS[0]) => {
                return Ok(Fifod {
                    startup: at - t0,
                    proc_: p,
                    config,
                });
            }
            Ok(_) => {}
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
    pub fn pid(&self) -> i32 {
        self.proc_.pid
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.proc_.log()
    }

    /// Sends `sig` to fifod.
    pub fn signal(&self, sig: libc::c_int) {
        self.proc_.signal(sig);
    }

    /// Waits (at most `within`) for the next log line containing `mark`,
    /// one of `MARKS`; returns when it arrived and the line.
    pub fn wait_mark(&self, mark: &[&str], within: Duration) -> Res<(Instant, String)> {
        let rx = self.proc_.marks.as_ref().ok_or("no log marks")?;
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((at, line)) if mark.iter().any(|m| line.contains(m)) => return Ok((at, line)),
                Ok(_) => {}
                Err(_) => {
                    return Err(format!(
                        "no log line with {mark:?} within {within:?}:\n{}",
                        self.proc_.log()
                    ));
                }
            }
        }
    }

    /// Stops it and checks that the stop was clean; returns its CPU seconds.
    pub fn stop(self) -> Res<f64> {
        let problems = Arc::clone(&self.proc_.problems);
        let cpu = self.proc_.stop()?;
        // Let the log thread take the last lines.
        thread::sleep(Duration::from_millis(5));
        let bad = problems.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !bad.is_empty() {
            return Err(format!("fifod reported problems:\n{}", bad.join("\n")));
        }
        Ok(cpu)
    }
}

/// Config body: `fifos` with default settings, then `routes` (from, to),
/// after `extra_daemon` lines of the `[daemon]` table.
pub fn fifod_body(fifos: &[&str], routes: &[(&[&str], &[&str])], extra_daemon: &str) -> String {
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

/// Config body of `pairs` routes `in<i>` → `out<i>` (2 × `pairs` FIFOs).
pub fn pairs_body(pairs: usize) -> String {
    let mut body = String::new();
    for i in 0..pairs {
        let _ = writeln!(
            body,
            "[fifo.in{i}]\n[fifo.out{i}]\n[[route]]\nfrom = [\"in{i}\"]\nto = [\"out{i}\"]"
        );
    }
    body
}
