//! The drain at stop, and the final report.

use std::os::fd::AsFd;
use std::time::Instant;

use log::{info, warn};
use nix::sys::signal::Signal;

use super::{Daemon, Intake, KILL_GRACE, SinkKind, SourceKind, State, signal_name};
use crate::child;
use crate::fifo::Access;
use crate::pipe;
use crate::relay::{SinkId, SourceId};
use crate::units::format_duration;

impl Daemon {
    pub(super) fn on_stop_signal(&mut self, signal: libc::c_int) {
        let name = signal_name(signal);
        match self.state {
            State::Running => {
                let timeout = self.config.daemon.shutdown_timeout;
                info!(
                    "received {name}: draining for up to {} (send it again to stop at once)",
                    format_duration(timeout)
                );
                self.state = State::Draining {
                    deadline: Instant::now() + timeout,
                };
                let line = format!("stopping: draining (received {name})");
                self.notifier.stopping(&self.last_reload.status_line(line));
                // A clean stop leaves the fd store empty, and the store's
                // fds must not count as readers of the outputs.
                self.fd_store.close();
                self.hand_over_line_logs();
                // Take what writers already put in the inputs, and no more.
                for s in self.sources.ids() {
                    if self.sources[s].kind.written_by_others() {
                        let queued = self.sources[s]
                            .fd
                            .as_ref()
                            .map_or(0, |fd| pipe::queued_bytes(fd.as_fd()));
                        self.sources[s].quota = Some(queued);
                        if queued == 0 {
                            self.pause(s);
                        }
                    }
                }
                for k in self.sinks.ids() {
                    self.let_go_of_own_reader(k);
                }
                for c in 0..self.children.len() {
                    self.children[c].restart_at = None;
                    match (self.children[c].pid, self.ends[c].stdin) {
                        // Down, and not coming back: it takes nothing more.
                        (None, Some(k)) => self.close_stdin(k),
                        // It reads no input, so no end of input will stop it.
                        (Some(pid), None) => {
                            info!(
                                "sending SIGTERM to process {} (pid {pid}), which reads no input",
                                self.children[c].name()
                            );
                            child::signal_group(pid, Signal::SIGTERM);
                        }
                        _ => {}
                    }
                }
            }
            State::Draining { .. } => {
                info!("received {name} again: skipping the rest of the drain");
                self.stop_children(Instant::now());
            }
            State::Killing { .. } | State::Done => {}
        }
    }

    /// At the drain's start, an output FIFO of fifod's own stops having
    /// fifod as a reader: its read-write fd (or, between sessions, the
    /// read-only one that keeps the pipe) gives way to a write-only fd, which
    /// tells whether anyone else reads. With nobody reading, the drain does
    /// not wait for a reader that is not there: what fifod holds for the
    /// FIFO and what is in its pipe are reported as undelivered. Between
    /// sessions with a reader, the read-only fd comes back, so that the
    /// reader still gets its end.
    fn let_go_of_own_reader(&mut self, k: SinkId) {
        let SinkKind::Fifo(fifo) = self.sinks[k].kind else {
            return;
        };
        let managed = &self.footprint.fifos[fifo];
        // A FIFO the service manager holds keeps its bytes for the next
        // fifod (or reader): there is nothing to wait for.
        if managed.passed || self.sinks[k].intake != Intake::Open {
            return;
        }
        let write = match managed.reopen(Access::Write) {
            Ok(fd) => fd,
            Err(e) => {
                warn!("fifo {}: {e}", self.sinks[k].name);
                return;
            }
        };
        let reader = if self.sinks[k].fd.is_some() {
            self.set_sink_fd(k, Some(write));
            self.sinks[k]
                .fd
                .as_ref()
                .is_some_and(|fd| pipe::has_reader(fd.as_fd()))
        } else {
            self.sinks[k].keep_alive = None;
            let reader = pipe::has_reader(write.as_fd());
            self.sinks[k].keep_alive = if reader {
                // It only kept the pipe; the reader keeps it now, until
                // the read-only fd is back.
                managed.reopen(Access::Read).ok()
            } else {
                Some(write)
            };
            reader
        };
        if !reader {
            info!(
                "fifo {}: nobody reads it: not waiting for a reader",
                self.sinks[k].name
            );
            self.sinks[k].intake = Intake::Closed;
            self.set_sink_watched(k, false);
        }
    }

    pub(super) fn advance_shutdown(&mut self, now: Instant) {
        match self.state {
            State::Running | State::Done => {}
            State::Draining { deadline } => {
                // Every tick, offer what is held to sinks not waiting for
                // writability: the drain must not depend on a wake-up.
                for k in self.sinks.ids() {
                    let sink = &self.sinks[k];
                    if sink.intake == Intake::Open && !sink.watched && self.relay.held_for(k) > 0 {
                        self.flush(k);
                    }
                }
                // Writers that left a line unfinished get it delivered as
                // it is, once their input is taken.
                for s in self.sources.ids() {
                    if self.sources[s].kind.written_by_others()
                        && self.sources[s].quota == Some(0)
                        && self.relay.has_partial_lines(s)
                    {
                        self.relay.flush_lines_of(s);
                        let fed: Vec<SinkId> = self.relay.sinks_of(s).collect();
                        for k in fed {
                            self.flush(k);
                        }
                    }
                }
                self.close_finished_stdins();
                if self.drained() {
                    let lost = self.held_for_good();
                    if lost == 0 {
                        info!("drain complete");
                    } else {
                        warn!(
                            "drain complete, but {lost} bytes are held for sinks that will not \
                             take them (nobody reads them, or their process stopped)"
                        );
                    }
                    self.state = State::Done;
                } else if now >= deadline {
                    warn!(
                        "shutdown_timeout ({}) reached before everything was delivered",
                        format_duration(self.config.daemon.shutdown_timeout)
                    );
                    self.stop_children(now);
                }
            }
            State::Killing { next, killed } => {
                if self.children.iter().all(|c| c.pid.is_none()) {
                    self.state = State::Done;
                } else if now >= next && !killed {
                    for child in &self.children {
                        if let Some(pid) = child.pid {
                            warn!("process {} did not exit: sending SIGKILL", child.name());
                            child::signal_group(pid, Signal::SIGKILL);
                        }
                    }
                    self.state = State::Killing {
                        next: now + KILL_GRACE,
                        killed: true,
                    };
                } else if now >= next {
                    // SIGKILL cannot be ignored; leave the waiting to finish().
                    self.state = State::Done;
                }
            }
        }
    }

    /// Whether a source will produce nothing more in this drain.
    /// Whether nothing more will be read from `s`: it is closed, its
    /// writers' share was taken, or none of the sinks it feeds takes bytes
    /// any more (what is left in it is reported as unread).
    fn source_finished(&self, s: SourceId) -> bool {
        let source = &self.sources[s];
        source.fd.is_none()
            || (source.kind.written_by_others() && source.quota == Some(0))
            || self
                .relay
                .sinks_of(s)
                .all(|k| self.sinks[k].intake != Intake::Open)
    }

    /// Ends the input of each process whose every source has finished and
    /// whose bytes were all written: in a pipeline, each stage's stdin
    /// closes after the stage before it ended, so nothing is cut off.
    fn close_finished_stdins(&mut self) {
        for c in 0..self.ends.len() {
            let Some(k) = self.ends[c].stdin else {
                continue;
            };
            if self.sinks[k].intake != Intake::Open || self.relay.held_for(k) > 0 {
                continue;
            }
            let feeders: Vec<SourceId> = self.relay.sources_feeding(k).collect();
            if feeders.iter().all(|&s| self.source_finished(s)) {
                self.close_stdin(k);
            }
        }
    }

    /// Closes a process's stdin for good: it gets EOF, and what is still
    /// held for it is reported as undelivered.
    fn close_stdin(&mut self, k: SinkId) {
        self.set_sink_fd(k, None);
        self.sinks[k].intake = Intake::Closed;
    }

    /// SIGTERM to every running process's group; SIGKILL follows.
    pub(super) fn stop_children(&mut self, now: Instant) {
        for c in 0..self.ends.len() {
            if let Some(k) = self.ends[c].stdin {
                self.close_stdin(k);
            }
        }
        let mut any = false;
        for child in &self.children {
            if let Some(pid) = child.pid {
                info!("sending SIGTERM to process {} (pid {pid})", child.name());
                child::signal_group(pid, Signal::SIGTERM);
                any = true;
            }
        }
        self.state = if any {
            State::Killing {
                next: now + KILL_GRACE,
                killed: false,
            }
        } else {
            State::Done
        };
    }

    pub(super) fn drained(&self) -> bool {
        self.children.iter().all(|c| c.pid.is_none())
            && self
                .sources
                .ids()
                .into_iter()
                .all(|s| self.source_finished(s))
            && self.relay.held_total() == self.held_for_good()
            && self.sinks.values().all(|k| match (&k.kind, &k.fd) {
                // Bytes a reader has yet to read; not those of a FIFO that
                // nobody reads, nor of one the service manager keeps.
                (SinkKind::Fifo(fifo), Some(fd)) => {
                    k.intake != Intake::Open
                        || self.footprint.fifos[*fifo].passed
                        || pipe::queued_bytes(fd.as_fd()) == 0
                }
                _ => true,
            })
    }

    /// Bytes held for sinks that will never take them.
    pub(super) fn held_for_good(&self) -> usize {
        self.sinks
            .iter()
            .filter(|(_, sink)| sink.intake != Intake::Open)
            .map(|(k, _)| self.relay.held_for(k))
            .sum()
    }

    /// Reports what was relayed and what is left, makes sure no process is
    /// left, then removes the footprint.
    pub(super) fn finish(&mut self) {
        for child in &mut self.children {
            if let Some(pid) = child.pid.take() {
                child::signal_group(pid, Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(pid, None);
            }
        }
        self.replaced.kill_and_wait();
        child::kill_leftovers();
        self.retiring.remove_all();
        // Lines still in progress are held too: count them with the rest.
        for s in self.sources.ids() {
            self.relay.flush_lines_of(s);
        }
        for (l, lane) in self.relay.live_lanes() {
            let s = lane.stats();
            info!(
                "stats {}: accepted={} delivered={} dropped={} undelivered={}",
                self.lane_name(l),
                s.accepted,
                s.delivered,
                s.dropped,
                lane.held()
            );
        }
        for (k, sink) in self.sinks.iter() {
            let held = self.relay.held_for(k);
            let (unread, kept) = match (&sink.kind, sink.fd.as_ref().or(sink.keep_alive.as_ref())) {
                (SinkKind::Fifo(fifo), Some(fd)) => {
                    let queued = pipe::queued_bytes(fd.as_fd());
                    if self.footprint.fifos[*fifo].passed {
                        (0, queued)
                    } else {
                        (queued, 0)
                    }
                }
                _ => (0, 0),
            };
            if kept > 0 {
                info!(
                    "{}: {kept} bytes kept in the FIFO, which the service manager holds",
                    sink.name
                );
            }
            if held + unread > 0 {
                warn!(
                    "{}: {} bytes undelivered ({held} held by fifod, {unread} unread in the pipe)",
                    sink.name,
                    held + unread
                );
            }
        }
        // What writers put in the inputs after fifod took its share. The
        // pipe of a FIFO that goes with fifod is filled first, so that this
        // count is the last word; never one that outlives it (a FIFO the
        // service manager holds, fifod's own stdin), whose bytes are kept.
        for source in self.sources.values() {
            let goes = match source.kind {
                SourceKind::Fifo { fifo, .. } | SourceKind::Detached { fifo } => {
                    !self.footprint.fifos[fifo].passed
                }
                SourceKind::Stdin
                | SourceKind::Stdout(_)
                | SourceKind::Stderr(_)
                | SourceKind::Log(_) => false,
            };
            let left = source.fd.as_ref().map_or(0, |fd| {
                if goes {
                    pipe::freeze(fd.as_fd())
                } else {
                    pipe::queued_bytes(fd.as_fd())
                }
            });
            if left > 0 && goes {
                warn!("{}: {left} bytes left unread", source.name);
            } else if left > 0 {
                info!("{}: {left} bytes kept for the next reader", source.name);
            }
        }
        self.footprint.remove();
        info!("stopped");
    }
}
