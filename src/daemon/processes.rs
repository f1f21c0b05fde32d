//! Starting, reaping and restarting the configured processes.

use std::time::Instant;

use log::{debug, error, info, warn};

use super::{Daemon, Intake, State};
use crate::child::{self, Exit, Wiring};
use crate::units::format_duration;

impl Daemon {
    pub(super) fn start_child(&mut self, c: usize) {
        let ends = self.ends[c];
        let wiring = Wiring {
            stdin: ends.stdin.is_some(),
            stdout: ends.stdout.is_some(),
            stderr: ends.stderr.is_some(),
        };
        let now = Instant::now();
        match child::spawn(&self.children[c].spec, wiring, self.fd_store.enabled()) {
            Ok((pid, pipes)) => {
                info!("started process {} (pid {pid})", self.children[c].name());
                self.children[c].started(pid, now);
                if let Some(k) = ends.stdin {
                    self.set_sink_fd(k, pipes.stdin);
                    self.sinks[k].intake = Intake::Open;
                }
                for (s, fd) in [(ends.stdout, pipes.stdout), (ends.stderr, pipes.stderr)] {
                    if let Some(s) = s {
                        if self.sources[s].fd.is_some() {
                            warn!(
                                "{}: the previous instance's output is still open (held by a \
                                 process it started?); fifod stops reading it",
                                self.sources[s].name
                            );
                        }
                        self.sources[s].partial.clear();
                        self.set_source_fd(s, fd);
                    }
                }
                // Before a byte goes into its stdin: a crash of fifod leaves
                // it running, with its pipes kept.
                self.store_running(c);
                if let Some(k) = ends.stdin {
                    self.flush(k);
                }
            }
            Err(e) => {
                error!("cannot start process {}: {e}", self.children[c].name());
                self.child_exited(c, None, Exit::SpawnFailed);
            }
        }
    }

    pub(super) fn on_children_exited(&mut self) {
        for (pid, how) in child::reap() {
            match self.children.iter().position(|c| c.pid == Some(pid)) {
                Some(c) => self.child_exited(c, Some(pid), how),
                None if self.replaced.reaped(pid, how) => {}
                None => debug!("reaped pid {pid}, {how}"),
            }
        }
    }

    pub(super) fn child_exited(&mut self, c: usize, pid: Option<nix::unistd::Pid>, how: Exit) {
        let stopping = self.state != State::Running;
        let now = Instant::now();
        self.unstore_running(c);
        if let Some(fd) = self.pidfds.remove(&c) {
            let _ = self.events.remove(std::os::fd::AsFd::as_fd(&fd));
        }
        let restart_at = self.children[c].exited(how, now, stopping);
        let name = self.children[c].name().to_string();
        let pid = pid.map_or(String::new(), |p| format!(" (pid {p})"));
        let next = match restart_at {
            Some(at) => format!("; restarting in {}", format_duration(at - now)),
            None if stopping => String::new(),
            None => "; it will not be restarted".to_string(),
        };
        if how.success() {
            info!("process {name}{pid} {how}{next}");
        } else {
            warn!("process {name}{pid} {how}{next}");
        }
        // Its stdout and stderr are read to their end; its stdin is gone.
        if let Some(k) = self.ends[c].stdin {
            self.set_sink_fd(k, None);
            if stopping {
                // What it still holds is reported as undelivered at the end.
                self.sinks[k].intake = Intake::Closed;
            } else if restart_at.is_none() {
                self.sinks[k].intake = Intake::Refusing;
                let lost = self.relay.discard(k);
                if lost > 0 {
                    warn!(
                        "process {name} will not run again: {lost} bytes held for its stdin are dropped"
                    );
                }
                self.flush(k);
            }
        }
    }
}
