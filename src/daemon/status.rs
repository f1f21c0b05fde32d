//! The status snapshot the control socket answers with.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use log::warn;

use super::line_log;
use super::{CONTROL_RETRY, Daemon, SinkKind, SourceKind, State};
use crate::config::{Eof, Framing};
use crate::control::{
    FifoStatus, LineCounts, ProcessStatus, RouteStatus, STATUS_VERSION, SinkStatus, Status,
};
use crate::event_loop::{Interest, Token};
use crate::pipe;
use crate::relay::{SinkId, SourceId};

impl Daemon {
    /// Answers every connection waiting on the control socket, with one
    /// status snapshot for all of them. While every answer slot is taken,
    /// the socket is not watched: further clients wait in its queue, and
    /// cost the loop nothing.
    pub(super) fn answer_status(&mut self) {
        let Some(mut control) = self.control.take() else {
            return;
        };
        match control.accept_all(|| self.status()) {
            Ok(slots) => {
                for slot in slots {
                    if let Some(fd) = control.client_fd(slot)
                        && let Err(e) = self.events.add(fd, Token::Client(slot), Interest::Write)
                    {
                        warn!("cannot watch a status client: {e}");
                        control.close(slot);
                    }
                }
                if !control.has_room() && !self.control_full {
                    let _ = self.events.remove(control.listener_fd());
                    self.control_full = true;
                }
            }
            Err(e) => {
                // Out of fds, say: the listener stays readable, so stop
                // watching it for a while rather than spin.
                warn!("control socket: {e}; not answering for a second");
                let _ = self.events.remove(control.listener_fd());
                self.control_retry_at = Some(Instant::now() + CONTROL_RETRY);
            }
        }
        self.control = Some(control);
    }

    /// A status client finished or was dropped: if the socket was left
    /// unwatched for want of room, it is watched again.
    pub(super) fn control_has_room(&mut self) {
        if !self.control_full || self.control_retry_at.is_some() {
            return;
        }
        if let Some(control) = &self.control
            && control.has_room()
        {
            self.control_full = false;
            if let Err(e) = self
                .events
                .add(control.listener_fd(), Token::Control, Interest::Read)
            {
                warn!("cannot watch the control socket: {e}");
            }
        }
    }

    /// Watches the control socket again after a pause.
    pub(super) fn resume_control(&mut self) {
        self.control_retry_at = None;
        self.control_full = false;
        if let Some(control) = &self.control
            && let Err(e) = self
                .events
                .add(control.listener_fd(), Token::Control, Interest::Read)
        {
            warn!("cannot watch the control socket: {e}");
        }
    }

    /// Sends the service manager a fresh status line if it changed and the
    /// rate limit allows.
    pub(super) fn offer_status(&mut self) {
        let now = Instant::now();
        if self.notifier.status_wanted(now) {
            let line = self.status_line();
            self.notifier.status(now, line);
        }
    }

    /// One line for `systemctl status`: what runs and how much moved,
    /// after a failed reload while it stands.
    pub(super) fn status_line(&self) -> String {
        let running = self.children.iter().filter(|c| c.pid.is_some()).count();
        let relayed: u64 = self.relay.lanes().iter().map(|l| l.stats().delivered).sum();
        let dropped: u64 = self.relay.lanes().iter().map(|l| l.stats().dropped).sum();
        let mut line = format!(
            "{} fifos, {running}/{} processes running, {relayed} bytes relayed",
            self.footprint.fifos.len(),
            self.children.len(),
        );
        if dropped > 0 {
            line.push_str(&format!(", {dropped} bytes dropped"));
        }
        self.last_reload.status_line(line)
    }

    /// A snapshot of everything `fifod status` shows.
    pub(super) fn status(&self) -> Status {
        let delivered_to = |k: SinkId| -> u64 {
            self.relay
                .lanes_of_sink(k)
                .iter()
                .map(|&l| self.relay.lanes()[l].stats().delivered)
                .sum()
        };
        let queued =
            |fd: Option<&OwnedFd>| fd.map_or(0, |fd| pipe::queued_bytes(fd.as_fd()) as u64);
        let mut source_of_fifo = HashMap::new();
        for source in self.sources.values() {
            if let SourceKind::Fifo { fifo, .. } = source.kind {
                source_of_fifo.insert(fifo, source);
            }
        }
        let mut sink_of_fifo = HashMap::new();
        for (k, sink) in self.sinks.iter() {
            if let SinkKind::Fifo(fifo) = sink.kind {
                sink_of_fifo.insert(fifo, k);
            }
        }
        let fifos = self
            .config
            .fifos
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let source = source_of_fifo.get(&i);
                let sink = sink_of_fifo.get(&i).copied();
                let (role, bytes, waiting) = match (source, sink) {
                    (Some(s), _) => ("input", s.bytes, queued(s.fd.as_ref())),
                    (None, Some(k)) => {
                        let sink = &self.sinks[k];
                        (
                            "output",
                            delivered_to(k),
                            queued(sink.fd.as_ref().or(sink.keep_alive.as_ref())),
                        )
                    }
                    (None, None) => (
                        "unrouted",
                        0,
                        self.footprint.fifos[i]
                            .fd()
                            .map_or(0, |fd| pipe::queued_bytes(fd) as u64),
                    ),
                };
                FifoStatus {
                    name: spec.name.clone(),
                    path: spec.path.display().to_string(),
                    mode: spec.mode.to_string(),
                    role: role.to_string(),
                    peers: None,
                    bytes,
                    queued: waiting,
                }
            })
            .collect();
        let processes = self
            .children
            .iter()
            .zip(&self.ends)
            .map(|(child, ends)| {
                let read = |s: Option<SourceId>| s.map_or(0, |s| self.sources[s].bytes);
                ProcessStatus {
                    name: child.name().to_string(),
                    command: child.spec.command.clone(),
                    pid: child.pid.map(nix::unistd::Pid::as_raw),
                    state: if child.pid.is_some() {
                        "running"
                    } else if child.restart_at.is_some() {
                        "restarting"
                    } else {
                        "stopped"
                    }
                    .to_string(),
                    restarts: child.restarts,
                    last_exit: child.last_exit.map(|e| e.to_string()),
                    bytes_in: ends.stdin.map_or(0, delivered_to),
                    bytes_out: read(ends.stdout) + read(ends.stderr),
                }
            })
            .collect();
        let routes = self
            .config
            .routes
            .iter()
            .enumerate()
            .map(|(r, route)| {
                // A line in progress is in the relay, or in its source's log.
                let logged: usize = route
                    .from
                    .iter()
                    .filter_map(|from| match from {
                        crate::config::SourceRef::Fifo(name) => self.line_logs.get(name),
                        _ => None,
                    })
                    .map(line_log::LineLog::pending)
                    .sum();
                let waiting = (self.relay.partial_bytes(r) + logged) as u64;
                let sinks = self
                    .relay
                    .lanes_of_route(r)
                    .iter()
                    .map(|&l| &self.relay.lanes()[l])
                    .map(|lane| {
                        let st = lane.stats();
                        SinkStatus {
                            sink: self.sinks[lane.sink].name.clone(),
                            produced: st.accepted + waiting,
                            delivered: st.delivered,
                            held: lane.held() as u64 + waiting,
                            dropped: st.dropped,
                            lines: lane.lines().then(|| LineCounts {
                                produced: st.lines_accepted,
                                delivered: st.lines_delivered,
                                held: lane.held_lines(),
                                dropped: st.lines_dropped,
                            }),
                        }
                    })
                    .collect();
                RouteStatus {
                    index: r,
                    name: route.name.clone(),
                    from: route.from.iter().map(ToString::to_string).collect(),
                    to: route.to.iter().map(ToString::to_string).collect(),
                    framing: match route.framing {
                        Framing::Bytes => "bytes",
                        Framing::Lines => "lines",
                    }
                    .to_string(),
                    when_full: route.when_full.to_string(),
                    eof: match route.eof {
                        Eof::Hold => "hold",
                        Eof::Forward => "forward",
                    }
                    .to_string(),
                    long_lines: self.relay.long_lines(r),
                    sinks,
                }
            })
            .collect();
        Status {
            version: STATUS_VERSION,
            pid: std::process::id(),
            uptime_seconds: self.started_at.elapsed().as_secs_f64(),
            dir: self.config.daemon.dir.display().to_string(),
            state: match self.state {
                State::Running => "running",
                State::Draining { .. } => "draining",
                State::Killing { .. } | State::Done => "stopping",
            }
            .to_string(),
            last_reload: self.last_reload.status(),
            reload_requests: self.last_reload.requests(),
            upgrades: self.upgrades,
            upgrade_failures: self.upgrade_failures,
            upgrade_error: self.upgrade_error.clone(),
            fifos,
            processes,
            routes,
            processes_not_visible: None,
        }
    }
}
