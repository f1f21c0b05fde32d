//! `fifod run`: sets up the footprint on disk, then runs the event loop that
//! moves bytes between FIFOs, then drains and cleans up.
//!
//! This is where the pieces meet: `fifo` owns the paths and fds, `relay` owns
//! the held bytes and the accounting, `event_loop` owns epoll; the daemon
//! performs the reads and writes the relay asks for.

use std::fmt;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use nix::errno::Errno;
use nix::sys::stat::{Mode as NixMode, umask};

use crate::config::{Config, Role};
use crate::event_loop::{Event, EventLoop, Interest, Token};
use crate::fifo::{Footprint, FsError};
use crate::pipe::{self, Resized};
use crate::relay::{LaneId, Relay, RouteSpec, SinkId, SourceId};
use crate::units::{Size, format_duration};

/// Largest single read from a source.
const READ_CHUNK: usize = 128 * 1024;
/// A paused source is read again once every blocking lane it feeds has this
/// much room, so that backpressure does not degrade into tiny reads.
const RESUME_AT: usize = 4096;
/// How often drop counts may be logged, per lane.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// While draining, how often to look whether readers emptied the outputs
/// (the kernel does not announce that a pipe became empty).
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// Why `run` failed.
#[derive(Debug)]
pub enum RunError {
    /// The start failed: nothing is left behind.
    Start(String),
    /// The loop failed after start; the footprint was removed.
    Runtime(String),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Start(why) | RunError::Runtime(why) => f.write_str(why),
        }
    }
}

impl From<FsError> for RunError {
    fn from(e: FsError) -> RunError {
        RunError::Start(e.to_string())
    }
}

#[derive(Debug)]
struct Source {
    /// Index into `Footprint::fifos`.
    fifo: usize,
    /// Not watched because a blocking sink is full (or the drain is done).
    paused: bool,
    /// While draining: bytes still to take, counted when shutdown began.
    quota: Option<usize>,
}

#[derive(Debug)]
struct Sink {
    fifo: usize,
    /// Watched for writability: it holds bytes the pipe could not take.
    waiting: bool,
}

/// Rate-limiting of drop messages for one lane.
#[derive(Debug, Default)]
struct DropLog {
    reported: u64,
    last: Option<Instant>,
    due: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Draining { deadline: Instant },
    Done,
}

#[derive(Debug)]
pub struct Daemon {
    config: Config,
    footprint: Footprint,
    events: EventLoop,
    relay: Relay,
    sources: Vec<Source>,
    sinks: Vec<Sink>,
    drop_logs: Vec<DropLog>,
    scratch: Vec<u8>,
    state: State,
}

fn signal_name(signal: libc::c_int) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// Runs the daemon until SIGTERM or SIGINT and a clean shutdown.
pub fn run(config: Config) -> Result<(), RunError> {
    // Handlers first: a SIGTERM during start must not kill fifod before it
    // can remove what it made.
    let events = EventLoop::new(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
        .map_err(|e| RunError::Start(format!("cannot set up the event loop: {e}")))?;
    // Nodes are created private and given their exact mode by fchmod; the
    // umask must not narrow the first step.
    umask(NixMode::from_bits_truncate(0o077));
    let footprint = Footprint::create(&config)?;
    let mut daemon = Daemon::new(config, footprint, events);
    if let Err(e) = daemon.watch_all() {
        daemon.footprint.remove();
        return Err(RunError::Start(format!("cannot watch the FIFOs: {e}")));
    }
    daemon.run_loop();
    Ok(())
}

impl Daemon {
    fn new(config: Config, footprint: Footprint, events: EventLoop) -> Daemon {
        let position = |name: &str| footprint.fifos.iter().position(|f| f.name == name);
        let mut sources: Vec<Source> = Vec::new();
        let mut sinks: Vec<Sink> = Vec::new();
        let mut source_of = vec![None; footprint.fifos.len()];
        let mut sink_of = vec![None; footprint.fifos.len()];
        for (i, spec) in config.fifos.iter().enumerate() {
            match spec.role {
                Role::Input => {
                    source_of[i] = Some(sources.len());
                    sources.push(Source {
                        fifo: i,
                        paused: false,
                        quota: None,
                    });
                }
                Role::Output => {
                    sink_of[i] = Some(sinks.len());
                    sinks.push(Sink {
                        fifo: i,
                        waiting: false,
                    });
                }
                Role::Unrouted => info!(
                    "fifo {} is in no route: it is held open but nothing is relayed",
                    spec.name
                ),
            }
        }
        let routes: Vec<RouteSpec> = config
            .routes
            .iter()
            .map(|r| RouteSpec {
                sources: r
                    .from
                    .iter()
                    .filter_map(|n| position(n).and_then(|i| source_of[i]))
                    .collect(),
                sinks: r
                    .to
                    .iter()
                    .filter_map(|n| position(n).and_then(|i| sink_of[i]))
                    .collect(),
                buffer: usize::try_from(r.buffer.bytes()).unwrap_or(usize::MAX),
                when_full: r.when_full,
            })
            .collect();
        let relay = Relay::new(&routes, sources.len(), sinks.len());

        if let Some(size) = config.daemon.pipe_size {
            for fifo in &footprint.fifos {
                resize_pipe(&fifo.name, fifo.as_fd(), size);
            }
        }
        let drop_logs = relay.lanes().iter().map(|_| DropLog::default()).collect();
        Daemon {
            config,
            footprint,
            events,
            relay,
            sources,
            sinks,
            drop_logs,
            scratch: vec![0; READ_CHUNK],
            state: State::Running,
        }
    }

    /// Registers every source for reading; sinks are watched only while
    /// they hold bytes.
    fn watch_all(&self) -> std::io::Result<()> {
        for (i, source) in self.sources.iter().enumerate() {
            self.events
                .add(self.fd(source.fifo), Token::Source(i), Interest::Read)?;
        }
        for (i, sink) in self.sinks.iter().enumerate() {
            self.events
                .add(self.fd(sink.fifo), Token::Sink(i), Interest::None)?;
        }
        Ok(())
    }

    fn run_loop(&mut self) {
        info!(
            "ready: {} fifos, {} routes in {}",
            self.footprint.fifos.len(),
            self.config.routes.len(),
            self.config.daemon.dir.display()
        );
        let mut events = Vec::new();
        while self.state != State::Done {
            events.clear();
            let timeout = self.next_timeout();
            if let Err(e) = self.events.wait(timeout, &mut events) {
                error!("waiting for events failed: {e}; shutting down");
                break;
            }
            for &event in &events {
                self.handle(event);
            }
            self.on_timers();
        }
        self.finish();
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Signal(libc::SIGHUP) => {
                warn!("received SIGHUP: reloading is not supported yet; the running config stays");
            }
            Event::Signal(signal) => self.on_stop_signal(signal),
            Event::Ready { token, .. } if self.state == State::Done => {
                debug!("ignoring {token:?} after the drain");
            }
            Event::Ready {
                token: Token::Source(s),
                readable,
                failed,
                ..
            } => {
                if readable || failed {
                    self.read_source(s);
                }
            }
            Event::Ready {
                token: Token::Sink(k),
                ..
            } => self.flush(k),
        }
    }

    fn fd(&self, fifo: usize) -> BorrowedFd<'_> {
        self.footprint.fifos[fifo].as_fd()
    }

    fn read_source(&mut self, s: SourceId) {
        let quota = self.sources[s].quota.unwrap_or(usize::MAX);
        let budget = self.relay.read_budget(s, quota.min(READ_CHUNK));
        if budget == 0 {
            self.pause(s);
            return;
        }
        let fifo = self.sources[s].fifo;
        let fds = &self.footprint.fifos;
        let n = match nix::unistd::read(fds[fifo].as_fd(), &mut self.scratch[..budget]) {
            Ok(n) => n,
            Err(Errno::EAGAIN | Errno::EINTR) => return,
            Err(e) => {
                error!(
                    "fifo {}: read failed: {}; no longer reading it",
                    fds[fifo].name,
                    e.desc()
                );
                self.pause(s);
                return;
            }
        };
        if n == 0 {
            // fifod holds the write side too, so this cannot be a writer's EOF.
            return;
        }
        if let Some(q) = &mut self.sources[s].quota {
            *q = q.saturating_sub(n);
        }
        let sinks = &self.sinks;
        self.relay.ingest(s, &self.scratch[..n], |k, bytes| {
            write_some(fds[sinks[k].fifo].as_fd(), bytes)
        });
        let fed: Vec<SinkId> = self.relay.sinks_of(s).collect();
        for k in fed {
            if !self.sinks[k].waiting && self.relay.held_for(k) > 0 {
                self.flush(k);
            }
        }
        let lanes: Vec<LaneId> = (0..self.relay.lanes().len())
            .filter(|&l| self.relay.lanes()[l].stats().dropped > self.drop_logs[l].reported)
            .collect();
        for l in lanes {
            self.note_drops(l);
        }
        let done = self.sources[s].quota == Some(0);
        if done || self.relay.read_budget(s, 1) == 0 {
            self.pause(s);
        }
    }

    /// Writes what `sink` holds until it is empty or the pipe is full.
    fn flush(&mut self, k: SinkId) {
        let fifo = self.sinks[k].fifo;
        while let Some((lane, bytes)) = self.relay.pending(k) {
            let len = bytes.len();
            match nix::unistd::write(self.footprint.fifos[fifo].as_fd(), bytes) {
                Ok(n) => {
                    self.relay.delivered(lane, n);
                    if n < len {
                        break;
                    }
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    let lost = self.relay.discard(k);
                    error!(
                        "fifo {}: write failed: {}; {lost} held bytes dropped",
                        self.footprint.fifos[fifo].name,
                        e.desc()
                    );
                    break;
                }
            }
        }
        let waiting = self.relay.held_for(k) > 0;
        if waiting != self.sinks[k].waiting {
            self.sinks[k].waiting = waiting;
            let interest = if waiting {
                Interest::Write
            } else {
                Interest::None
            };
            self.watch(fifo, Token::Sink(k), interest);
        }
        let feeding: Vec<SourceId> = self.relay.sources_feeding(k).collect();
        for s in feeding {
            self.resume_if_room(s);
        }
    }

    fn watch(&self, fifo: usize, token: Token, interest: Interest) {
        if let Err(e) = self.events.set(self.fd(fifo), token, interest) {
            error!(
                "fifo {}: cannot change what is watched: {e}",
                self.footprint.fifos[fifo].name
            );
        }
    }

    fn pause(&mut self, s: SourceId) {
        if !self.sources[s].paused {
            self.sources[s].paused = true;
            self.watch(self.sources[s].fifo, Token::Source(s), Interest::None);
        }
    }

    fn resume_if_room(&mut self, s: SourceId) {
        let source = &self.sources[s];
        if !source.paused || source.quota == Some(0) || self.state == State::Done {
            return;
        }
        if self.relay.read_budget(s, RESUME_AT) >= RESUME_AT {
            self.sources[s].paused = false;
            self.watch(self.sources[s].fifo, Token::Source(s), Interest::Read);
        }
    }

    /// Logs new drops on a lane, at most once per `DROP_LOG_INTERVAL`.
    fn note_drops(&mut self, l: LaneId) {
        let now = Instant::now();
        let log = &mut self.drop_logs[l];
        match log.last {
            Some(last) if now < last + DROP_LOG_INTERVAL => {
                log.due = Some(last + DROP_LOG_INTERVAL);
            }
            _ => self.log_drops(l, now),
        }
    }

    fn log_drops(&mut self, l: LaneId, now: Instant) {
        let lane = &self.relay.lanes()[l];
        let total = lane.stats().dropped;
        let log = &mut self.drop_logs[l];
        let new = total - log.reported;
        log.reported = total;
        log.last = Some(now);
        log.due = None;
        if new > 0 {
            warn!(
                "{}: dropped {new} bytes (when_full = {}); {total} dropped in total",
                self.lane_name(l),
                lane.policy()
            );
        }
    }

    fn lane_name(&self, l: LaneId) -> String {
        let lane = &self.relay.lanes()[l];
        let sink = &self.footprint.fifos[self.sinks[lane.sink].fifo].name;
        format!("route[{}] -> {sink}", lane.route)
    }

    fn next_timeout(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut next = self.drop_logs.iter().filter_map(|d| d.due).min();
        if let State::Draining { deadline } = self.state {
            let tick = now + DRAIN_POLL;
            next = Some(next.map_or(tick, |n| n.min(tick)).min(deadline));
        }
        next.map(|at| at.saturating_duration_since(now))
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        for l in 0..self.drop_logs.len() {
            if self.drop_logs[l].due.is_some_and(|due| due <= now) {
                self.log_drops(l, now);
            }
        }
        if let State::Draining { deadline } = self.state {
            if self.drained() {
                info!("drain complete");
                self.state = State::Done;
            } else if now >= deadline {
                warn!(
                    "shutdown_timeout ({}) reached before everything was delivered",
                    format_duration(self.config.daemon.shutdown_timeout)
                );
                self.state = State::Done;
            }
        }
    }

    fn on_stop_signal(&mut self, signal: libc::c_int) {
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
                // Take what writers already put in the inputs, and no more.
                for s in 0..self.sources.len() {
                    let queued = pipe::queued_bytes(self.fd(self.sources[s].fifo));
                    self.sources[s].quota = Some(queued);
                    if queued == 0 {
                        self.pause(s);
                    }
                }
            }
            State::Draining { .. } => {
                info!("received {name} again: skipping the rest of the drain");
                self.state = State::Done;
            }
            State::Done => {}
        }
    }

    fn drained(&self) -> bool {
        self.sources.iter().all(|s| s.quota == Some(0))
            && self.relay.held_total() == 0
            && self
                .sinks
                .iter()
                .all(|k| pipe::queued_bytes(self.fd(k.fifo)) == 0)
    }

    /// Reports what was relayed and what is left, then removes the footprint.
    fn finish(&mut self) {
        for (l, lane) in self.relay.lanes().iter().enumerate() {
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
        for (k, sink) in self.sinks.iter().enumerate() {
            let held = self.relay.held_for(k);
            let unread = pipe::queued_bytes(self.fd(sink.fifo));
            if held + unread > 0 {
                warn!(
                    "fifo {}: {} bytes undelivered ({held} held by fifod, {unread} unread in the pipe)",
                    self.footprint.fifos[sink.fifo].name,
                    held + unread
                );
            }
        }
        for source in &self.sources {
            let left = pipe::queued_bytes(self.fd(source.fifo));
            if left > 0 {
                warn!(
                    "fifo {}: {left} bytes left unread in the input",
                    self.footprint.fifos[source.fifo].name
                );
            }
        }
        self.footprint.remove();
        info!("stopped");
    }
}

/// One non-blocking write; how many bytes went in (0 if none could).
fn write_some(fd: BorrowedFd<'_>, bytes: &[u8]) -> usize {
    loop {
        match nix::unistd::write(fd, bytes) {
            Ok(n) => return n,
            Err(Errno::EINTR) => continue,
            // Anything else is seen and reported by the next flush.
            Err(_) => return 0,
        }
    }
}

fn resize_pipe(name: &str, fd: BorrowedFd<'_>, size: Size) {
    let want = usize::try_from(size.bytes()).unwrap_or(usize::MAX);
    match pipe::set_capacity(fd, want) {
        Resized::Done(got) => debug!("fifo {name}: pipe size {got} bytes"),
        Resized::Capped { limit, got } => warn!(
            "fifo {name}: pipe_size {size} is above /proc/sys/fs/pipe-max-size ({limit}); \
             using {got} bytes"
        ),
        Resized::Refused { errno, got } => warn!(
            "fifo {name}: cannot set pipe_size {size}: {}; the pipe keeps {got} bytes",
            errno.desc()
        ),
    }
}
