//! Processes: what /proc lists, a daemon guarded so that a failing test
//! leaves no process behind, and `gzip -dc`.

use std::fs;
use std::io::{Read, Write};
use std::ops::{Deref, DerefMut};
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use super::{Daemon, TIMEOUT, messages, spawn, wait_child, wait_until};

/// `(state, ppid, pgrp)` of a process, from /proc/PID/stat.
pub fn proc_stat(pid: i32) -> Option<(char, i32, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat[stat.rfind(')')? + 1..].trim_start();
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// The process no longer runs: it is gone, or a zombie its new parent has
/// not reaped yet.
pub fn gone_or_zombie(pid: i32) -> bool {
    proc_stat(pid).is_none_or(|(state, _, _)| state == 'Z' || state == 'X')
}

/// Every process /proc lists, as (pid, state, ppid, pgrp).
fn all_processes() -> Vec<(i32, char, i32, i32)> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some((state, ppid, pgrp)) = proc_stat(pid) {
            out.push((pid, state, ppid, pgrp));
        }
    }
    out
}

/// Every process whose parent is `ppid`, with its state.
pub fn children_of(ppid: i32) -> Vec<(i32, char)> {
    all_processes()
        .into_iter()
        .filter(|&(_, _, parent, _)| parent == ppid)
        .map(|(pid, state, _, _)| (pid, state))
        .collect()
}

/// Every live (not zombie) process, as (pid, ppid, pgrp).
pub fn live_processes() -> Vec<(i32, i32, i32)> {
    all_processes()
        .into_iter()
        .filter(|&(_, state, _, _)| state != 'Z' && state != 'X')
        .map(|(pid, _, ppid, pgrp)| (pid, ppid, pgrp))
        .collect()
}

/// Live processes whose command line is `cmdline` (NUL-terminated
/// arguments), as (pid, pgrp).
pub fn live_running(cmdline: &[u8]) -> Vec<(i32, i32)> {
    live_processes()
        .into_iter()
        .filter(|&(pid, _, _)| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == cmdline))
        .map(|(pid, _, pgrp)| (pid, pgrp))
        .collect()
}

/// Pids of every `started process ... (pid N)`, whatever the name.
pub fn all_started_pids(log: &str) -> Vec<i32> {
    messages(log)
        .iter()
        .filter_map(|m| m.strip_prefix("started process "))
        .filter_map(|rest| rest.rsplit_once("(pid "))
        .filter_map(|(_, pid)| pid.trim_end_matches(')').parse().ok())
        .collect()
}

/// A running daemon that, when dropped, leaves nothing behind: fifod is
/// frozen, its children noted, and they and it are killed, then whatever
/// remains in the group of a process it started.
#[derive(Debug)]
pub struct Guarded(pub Daemon);

impl Guarded {
    pub fn start(toml: &str) -> Guarded {
        Guarded(Daemon::start(toml))
    }
}

impl Deref for Guarded {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.0
    }
}

impl DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.0
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let fifod = self.0.pid() as i32;
        if self.0.try_exited().is_none() {
            // Frozen, it starts no more children while they are counted.
            let _ = kill(Pid::from_raw(fifod), Signal::SIGSTOP);
            let kids: Vec<i32> = live_processes()
                .into_iter()
                .filter(|&(_, ppid, _)| ppid == fifod)
                .map(|(pid, _, _)| pid)
                .collect();
            let _ = kill(Pid::from_raw(fifod), Signal::SIGKILL);
            let _ = wait_until(TIMEOUT, || self.0.try_exited().is_some());
            for k in kids {
                let _ = killpg(Pid::from_raw(k), Signal::SIGKILL);
                let _ = kill(Pid::from_raw(k), Signal::SIGKILL);
            }
        }
        // What is left in the group of a process fifod started whose leader
        // is gone (the kernel never reuses a pid that is still a group's id,
        // so such a group is that process's).
        let started = all_started_pids(&self.0.log());
        let live = live_processes();
        for &(pid, _, pgrp) in &live {
            if started.contains(&pgrp) && !live.iter().any(|&(p, _, _)| p == pgrp) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Decompresses with the `gzip -dc` binary; panics unless it succeeds.
pub fn gunzip(data: Vec<u8>) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gzip -dc");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let writer = spawn(move || {
        // gzip may stop reading early on garbage: a broken pipe is its
        // verdict, reported by its exit status.
        let _ = stdin.write_all(&data);
    });
    let reader = spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).expect("read gzip output");
        out
    });
    let err_reader = spawn(move || {
        let mut out = String::new();
        let _ = stderr.read_to_string(&mut out);
        out
    });
    let out = reader.join(TIMEOUT);
    writer.join(TIMEOUT);
    let err = err_reader.join(TIMEOUT);
    let status = match wait_child(&mut child, TIMEOUT) {
        Some(st) => st,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gzip -dc did not exit");
        }
    };
    assert!(status.success(), "gzip -dc failed: {status:?}: {err}");
    out
}
