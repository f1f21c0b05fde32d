//! Processes a reload replaced or removed: SIGTERM at once, SIGKILL to
//! their group once the grace is over, until they are reaped.

use std::time::Instant;

use log::{info, warn};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::KILL_GRACE;
use crate::child::{self, Exit};

#[derive(Debug)]
struct Stopped {
    name: String,
    pid: Pid,
    /// When SIGKILL follows, if it has not been sent.
    kill_at: Option<Instant>,
}

#[derive(Debug, Default)]
pub(super) struct ReplacedProcesses {
    stopped: Vec<Stopped>,
}

impl ReplacedProcesses {
    /// Sends SIGTERM to process `name`'s group; SIGKILL follows after
    /// the grace if it is still there.
    pub(super) fn stop(&mut self, name: &str, pid: Pid, now: Instant) {
        info!("sending SIGTERM to process {name} (pid {pid}): the reload replaces it");
        child::signal_group(pid, Signal::SIGTERM);
        self.stopped.push(Stopped {
            name: name.to_string(),
            pid,
            kill_at: Some(now + KILL_GRACE),
        });
    }

    /// Whether reaped `pid` was one of them (it is forgotten).
    pub(super) fn reaped(&mut self, pid: Pid, how: Exit) -> bool {
        let Some(i) = self.stopped.iter().position(|s| s.pid == pid) else {
            return false;
        };
        let stopped = self.stopped.swap_remove(i);
        info!(
            "process {} (pid {pid}, replaced by a reload) {how}",
            stopped.name
        );
        true
    }

    /// SIGKILL to the groups that outlived their grace (`all`: every one).
    pub(super) fn kill_due(&mut self, now: Instant, all: bool) {
        for stopped in &mut self.stopped {
            if all || stopped.kill_at.is_some_and(|at| at <= now) {
                warn!(
                    "process {} (pid {}, replaced by a reload) did not exit: sending SIGKILL",
                    stopped.name, stopped.pid
                );
                child::signal_group(stopped.pid, Signal::SIGKILL);
                stopped.kill_at = None;
            }
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.stopped.iter().filter_map(|s| s.kill_at).min()
    }

    /// At the very end: SIGKILL to all, and wait for each.
    pub(super) fn kill_and_wait(&mut self) {
        self.kill_due(Instant::now(), true);
        for stopped in self.stopped.drain(..) {
            let _ = nix::sys::wait::waitpid(stopped.pid, None);
        }
    }
}
