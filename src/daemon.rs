//! `fifod run`: sets up the footprint on disk, starts the processes, runs the
//! event loop that moves bytes between endpoints, then drains and cleans up.
//!
//! This is where the pieces meet: `fifo` owns the paths, `child` starts and
//! reaps processes, `relay` owns the held bytes and the accounting,
//! `event_loop` owns epoll; the daemon performs the reads and writes the
//! relay asks for and keeps every endpoint's fd.

use std::collections::HashMap;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::stat::{Mode as NixMode, SFlag, fstat, umask};

use crate::child::{self, Exit, Supervised, Wiring};
use crate::config::{Config, Eof, Framing, Role, SinkRef, SourceRef, StderrMode};
use crate::control::{
    ControlServer, FifoStatus, LineCounts, ProcessStatus, RouteStatus, STATUS_VERSION, SinkStatus,
    Status,
};
use crate::event_loop::{Event, EventLoop, Interest, Token};
use crate::fifo::{Access, Footprint, FsError};
use crate::pipe::{self, Resized};
use crate::relay::{LaneId, Relay, RouteSpec, SinkId, SourceId};
use crate::units::{Size, format_duration};

/// Largest single read from a source.
const READ_CHUNK: usize = 128 * 1024;
/// Largest single splice or tee: it moves pages, not bytes, so it may be
/// larger than a read.
const SPLICE_CHUNK: usize = 1024 * 1024;
/// A paused source is read again once every blocking lane it feeds has this
/// much room, so that backpressure does not degrade into tiny reads.
const RESUME_AT: usize = 4096;
/// How often drop counts may be logged, per lane.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// While draining, how often to look whether readers emptied the outputs
/// (the kernel does not announce that a pipe became empty).
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// An output FIFO gets its end once its reader has emptied it; how soon to
/// look again, doubling up to the maximum.
const END_POLL_FIRST: Duration = Duration::from_millis(10);
const END_POLL_MAX: Duration = Duration::from_secs(1);
/// Between SIGTERM and SIGKILL to a child's process group at shutdown.
const KILL_GRACE: Duration = Duration::from_secs(1);
/// A `stderr = "log"` line longer than this is logged in pieces.
const MAX_LOG_LINE: usize = 4096;

/// Why `run` failed.
#[derive(Debug)]
pub enum RunError {
    /// The start failed: nothing is left behind.
    Start(String),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Start(why) => f.write_str(why),
        }
    }
}

impl From<FsError> for RunError {
    fn from(e: FsError) -> RunError {
        RunError::Start(e.to_string())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceKind {
    /// An input FIFO; with `sessions`, held read-only so that the end of
    /// its writers shows (it is in a route that forwards ends).
    Fifo { fifo: usize, sessions: bool },
    /// A process's stdout (with stderr when merged).
    Stdout(usize),
    /// A process's separate stderr.
    Stderr(usize),
    /// A process's stderr, logged line by line (in no route).
    Log(usize),
    /// fifod's standard input.
    Stdin,
}

#[derive(Debug)]
struct Source {
    kind: SourceKind,
    name: String,
    fd: Option<OwnedFd>,
    /// Registered with epoll (only while it has an fd and is not paused).
    watched: bool,
    /// Not read because a blocking sink is full (or the drain took its share).
    paused: bool,
    /// While draining: bytes still to take, counted when shutdown began.
    quota: Option<usize>,
    /// `Log` sources: the start of a line not yet complete.
    partial: Vec<u8>,
    /// Bytes read from it so far.
    bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SinkKind {
    Fifo(usize),
    /// A process's stdin.
    Stdin(usize),
    /// fifod's standard output.
    Stdout,
}

#[derive(Debug)]
struct Sink {
    kind: SinkKind,
    name: String,
    /// None while a process is down, or an output FIFO is between sessions.
    fd: Option<OwnedFd>,
    /// An output FIFO between sessions: a read-only fd that keeps the pipe,
    /// and the bytes in it, alive without counting as a writer.
    keep_alive: Option<OwnedFd>,
    /// Registered for writability: it holds bytes the pipe could not take.
    watched: bool,
    /// It cannot take bytes for now (its process closed stdin or is gone for
    /// good, or fifod's stdout is not a pipe): what comes is dropped, counted.
    refusing: bool,
    /// An output FIFO's end waits for its reader to empty it: when to look.
    end_check: Option<(Instant, Duration)>,
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
    /// Taking what the inputs hold, then ending the processes' input, then
    /// delivering their output, until everything is out or `deadline`.
    Draining {
        deadline: Instant,
        stdins_closed: bool,
    },
    /// Processes got SIGTERM (then SIGKILL at `next`).
    Killing {
        next: Instant,
        killed: bool,
    },
    Done,
}

/// A process's endpoints, by index.
#[derive(Debug, Default, Clone, Copy)]
struct ProcessEnds {
    stdin: Option<SinkId>,
    stdout: Option<SourceId>,
    stderr: Option<SourceId>,
}

#[derive(Debug)]
pub struct Daemon {
    config: Config,
    footprint: Footprint,
    events: EventLoop,
    relay: Relay,
    sources: Vec<Source>,
    sinks: Vec<Sink>,
    children: Vec<Supervised>,
    ends: Vec<ProcessEnds>,
    drop_logs: Vec<DropLog>,
    scratch: Vec<u8>,
    state: State,
    control: Option<ControlServer>,
    started_at: Instant,
    /// Where bytes every sink already has (by `tee`) are spliced to be
    /// consumed from their source without a copy.
    dev_null: Option<OwnedFd>,
}

fn signal_name(signal: libc::c_int) -> &'static str {
    Signal::try_from(signal).map_or("a signal", Signal::as_str)
}

/// Runs the daemon until SIGTERM or SIGINT and a clean shutdown.
pub fn run(config: Config) -> Result<(), RunError> {
    // Handlers first: a SIGTERM during start must not kill fifod before it
    // can remove what it made.
    let events = EventLoop::new(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD])
        .map_err(|e| RunError::Start(format!("cannot set up the event loop: {e}")))?;
    // Nodes are created private and given their exact mode by fchmod; the
    // umask must not narrow that first step. Children get the umask back.
    let old_umask = umask(NixMode::from_bits_truncate(0o077));
    let footprint = Footprint::create(&config);
    umask(old_umask);
    let mut daemon = Daemon::new(config, footprint?, events)?;
    daemon.start_all();
    daemon.run_loop();
    Ok(())
}

/// Whether fifod's own fd 0 or 1 is something epoll can wait on.
fn is_pipe_or_socket(fd: BorrowedFd<'_>) -> bool {
    fstat(fd).is_ok_and(|st| {
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        kind == SFlag::S_IFIFO || kind == SFlag::S_IFSOCK
    })
}

fn std_stream(raw: libc::c_int) -> Option<OwnedFd> {
    // SAFETY: fd 0 and 1 are open for the life of the process (or the
    // borrow is refused by fstat below); the borrow ends before any close.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    if !is_pipe_or_socket(fd) {
        return None;
    }
    let owned = fd.try_clone_to_owned().ok()?;
    let flags = nix::fcntl::fcntl(&owned, nix::fcntl::FcntlArg::F_GETFL).ok()?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&owned, nix::fcntl::FcntlArg::F_SETFL(flags)).ok()?;
    Some(owned)
}

impl Daemon {
    fn new(
        config: Config,
        mut footprint: Footprint,
        events: EventLoop,
    ) -> Result<Daemon, RunError> {
        let forwards_from = |r: &SourceRef| {
            config
                .routes
                .iter()
                .any(|route| route.eof == Eof::Forward && route.from.contains(r))
        };
        let mut sources = Vec::new();
        let mut sinks = Vec::new();
        let mut source_ids: HashMap<SourceRef, SourceId> = HashMap::new();
        let mut sink_ids: HashMap<SinkRef, SinkId> = HashMap::new();
        let new_source = |kind, name: String| Source {
            kind,
            name,
            fd: None,
            watched: false,
            paused: false,
            quota: None,
            partial: Vec::new(),
            bytes: 0,
        };
        let new_sink = |kind, name: String| Sink {
            kind,
            name,
            fd: None,
            keep_alive: None,
            watched: false,
            refusing: false,
            end_check: None,
        };

        for (i, spec) in config.fifos.iter().enumerate() {
            match spec.role {
                Role::Input => {
                    let r = SourceRef::Fifo(spec.name.clone());
                    let sessions = forwards_from(&r);
                    source_ids.insert(r, sources.len());
                    sources.push(new_source(
                        SourceKind::Fifo { fifo: i, sessions },
                        spec.name.clone(),
                    ));
                }
                Role::Output => {
                    sink_ids.insert(SinkRef::Fifo(spec.name.clone()), sinks.len());
                    sinks.push(new_sink(SinkKind::Fifo(i), spec.name.clone()));
                }
                Role::Unrouted => info!(
                    "fifo {} is in no route: it is held open but nothing is relayed",
                    spec.name
                ),
            }
        }
        let named_in_from =
            |r: &SourceRef| config.routes.iter().any(|route| route.from.contains(r));
        let named_in_to = |r: &SinkRef| config.routes.iter().any(|route| route.to.contains(r));
        let mut ends = Vec::new();
        for (c, spec) in config.processes.iter().enumerate() {
            let mut e = ProcessEnds::default();
            let name = &spec.name;
            if named_in_to(&SinkRef::Process(name.clone())) {
                e.stdin = Some(sinks.len());
                sink_ids.insert(SinkRef::Process(name.clone()), sinks.len());
                sinks.push(new_sink(SinkKind::Stdin(c), name.clone()));
            }
            if named_in_from(&SourceRef::Process(name.clone())) {
                e.stdout = Some(sources.len());
                source_ids.insert(SourceRef::Process(name.clone()), sources.len());
                sources.push(new_source(SourceKind::Stdout(c), name.clone()));
            }
            let stderr_ref = SourceRef::Stderr(name.clone());
            if spec.stderr == StderrMode::Separate && named_in_from(&stderr_ref) {
                e.stderr = Some(sources.len());
                source_ids.insert(stderr_ref, sources.len());
                sources.push(new_source(SourceKind::Stderr(c), format!("{name}.stderr")));
            } else if spec.stderr == StderrMode::Log {
                e.stderr = Some(sources.len());
                sources.push(new_source(SourceKind::Log(c), format!("{name}.stderr")));
            }
            ends.push(e);
        }
        if named_in_from(&SourceRef::Stdin) {
            let mut source = new_source(SourceKind::Stdin, "stdin".to_string());
            source.fd = std_stream(libc::STDIN_FILENO);
            if source.fd.is_none() {
                info!("stdin is not a pipe: the stdin endpoint carries nothing");
            }
            source_ids.insert(SourceRef::Stdin, sources.len());
            sources.push(source);
        }
        if named_in_to(&SinkRef::Stdout) {
            let mut sink = new_sink(SinkKind::Stdout, "stdout".to_string());
            sink.fd = std_stream(libc::STDOUT_FILENO);
            if sink.fd.is_none() {
                info!(
                    "stdout is not a pipe: the stdout endpoint carries nothing (bytes are counted as dropped)"
                );
                sink.refusing = true;
            }
            sink_ids.insert(SinkRef::Stdout, sinks.len());
            sinks.push(sink);
        }

        let routes: Vec<RouteSpec> = config
            .routes
            .iter()
            .map(|r| RouteSpec {
                sources: r
                    .from
                    .iter()
                    .filter_map(|e| source_ids.get(e).copied())
                    .collect(),
                sinks: r
                    .to
                    .iter()
                    .filter_map(|e| sink_ids.get(e).copied())
                    .collect(),
                buffer: usize::try_from(r.buffer.bytes()).unwrap_or(usize::MAX),
                when_full: r.when_full,
                forward_eof: r.eof == Eof::Forward,
                max_line: (r.framing == Framing::Lines)
                    .then(|| usize::try_from(r.max_line.bytes()).unwrap_or(usize::MAX)),
            })
            .collect();
        let relay = Relay::new(&routes, sources.len(), sinks.len());

        // Take the FIFOs' fds. An input whose ends are forwarded is held
        // read-only: a write side of fifod's own would hide its writers' end.
        let mut fail = None;
        for source in &mut sources {
            if let SourceKind::Fifo { fifo, sessions } = source.kind {
                let managed = &mut footprint.fifos[fifo];
                source.fd = if sessions {
                    // Linux reports hang-up to a reader that saw a writer
                    // leave, fifod's own write side included; a reader opened
                    // after that waits quietly for the first real writer.
                    // The pipe is never without an fd, so nothing in it is lost.
                    let first = managed.reopen(Access::Read);
                    drop(managed.take_fd());
                    let reader = first.and_then(|first| {
                        let quiet = managed.reopen(Access::Read);
                        drop(first);
                        quiet
                    });
                    reader.map_err(|e| fail = Some(e)).ok()
                } else {
                    managed.take_fd()
                };
            }
        }
        for sink in &mut sinks {
            if let SinkKind::Fifo(fifo) = sink.kind {
                sink.fd = footprint.fifos[fifo].take_fd();
            }
        }
        if let Some(size) = config.daemon.pipe_size {
            let source_fds = sources
                .iter()
                .filter(|s| matches!(s.kind, SourceKind::Fifo { .. }));
            let sink_fds = sinks.iter().filter(|k| matches!(k.kind, SinkKind::Fifo(_)));
            for (name, fd) in source_fds
                .map(|s| (&s.name, s.fd.as_ref()))
                .chain(sink_fds.map(|k| (&k.name, k.fd.as_ref())))
            {
                if let Some(fd) = fd {
                    resize_pipe(name, fd.as_fd(), size);
                }
            }
            for fifo in &footprint.fifos {
                if let Some(fd) = fifo.fd() {
                    resize_pipe(&fifo.name, fd, size);
                }
            }
        }
        let drop_logs = relay.lanes().iter().map(|_| DropLog::default()).collect();
        let children = config
            .processes
            .iter()
            .cloned()
            .map(Supervised::new)
            .collect();
        let control = footprint.take_control().map(ControlServer::new);
        let mut daemon = Daemon {
            config,
            footprint,
            events,
            relay,
            sources,
            sinks,
            children,
            ends,
            drop_logs,
            scratch: vec![0; READ_CHUNK],
            state: State::Running,
            control,
            started_at: Instant::now(),
            dev_null: std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .ok()
                .map(OwnedFd::from),
        };
        if let Some(e) = fail {
            daemon.footprint.remove();
            return Err(e.into());
        }
        Ok(daemon)
    }

    fn start_all(&mut self) {
        for s in 0..self.sources.len() {
            self.watch_source(s);
        }
        if let Some(control) = &self.control
            && let Err(e) = self
                .events
                .add(control.listener_fd(), Token::Control, Interest::Read)
        {
            error!("cannot watch the control socket: {e}; fifod status will not answer");
        }
        for c in 0..self.children.len() {
            self.start_child(c);
        }
        info!(
            "ready: {} fifos, {} processes, {} routes in {}",
            self.footprint.fifos.len(),
            self.children.len(),
            self.config.routes.len(),
            self.config.daemon.dir.display()
        );
    }

    fn run_loop(&mut self) {
        let mut events = Vec::new();
        while self.state != State::Done {
            events.clear();
            let timeout = self.next_timeout();
            if let Err(e) = self.events.wait(timeout, &mut events) {
                error!("waiting for events failed: {e}; stopping");
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
            Event::Signal(libc::SIGCHLD) => self.on_children_exited(),
            Event::Signal(signal) => self.on_stop_signal(signal),
            Event::Ready {
                token: Token::Source(s),
                ..
            } => self.read_source(s),
            Event::Ready {
                token: Token::Sink(k),
                ..
            } => self.flush(k),
            Event::Ready {
                token: Token::Control,
                ..
            } => self.answer_status(),
            Event::Ready {
                token: Token::Client(slot),
                ..
            } => {
                if let Some(control) = &mut self.control {
                    // A finished client's fd is closed, which ends its watch.
                    let _ = control.write(slot);
                }
            }
        }
    }

    // ---- Status -------------------------------------------------------------

    fn answer_status(&mut self) {
        let status = self.status();
        let Some(control) = &mut self.control else {
            return;
        };
        match control.accept(&status) {
            Ok(Some(slot)) => {
                if let Some(fd) = control.client_fd(slot)
                    && let Err(e) = self.events.add(fd, Token::Client(slot), Interest::Write)
                {
                    warn!("cannot watch a status client: {e}");
                    control.close(slot);
                }
            }
            Ok(None) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => warn!("control socket: {e}"),
        }
    }

    /// A snapshot of everything `fifod status` shows.
    fn status(&self) -> Status {
        let delivered_to = |k: SinkId| -> u64 {
            self.relay
                .lanes_of_sink(k)
                .iter()
                .map(|&l| self.relay.lanes()[l].stats().delivered)
                .sum()
        };
        let queued =
            |fd: Option<&OwnedFd>| fd.map_or(0, |fd| pipe::queued_bytes(fd.as_fd()) as u64);
        let fifos = self
            .config
            .fifos
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let source = self
                    .sources
                    .iter()
                    .find(|s| matches!(s.kind, SourceKind::Fifo { fifo, .. } if fifo == i));
                let sink = (0..self.sinks.len()).find(|&k| self.sinks[k].kind == SinkKind::Fifo(i));
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
                let waiting = self.relay.partial_bytes(r) as u64;
                let sinks = self
                    .relay
                    .lanes()
                    .iter()
                    .filter(|lane| lane.route == r)
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
            fifos,
            processes,
            routes,
        }
    }

    // ---- Watching fds -------------------------------------------------------

    fn watch_source(&mut self, s: SourceId) {
        let source = &mut self.sources[s];
        if source.watched || source.paused {
            return;
        }
        if let Some(fd) = &source.fd {
            match self
                .events
                .add(fd.as_fd(), Token::Source(s), Interest::Read)
            {
                Ok(()) => source.watched = true,
                Err(e) => error!("{}: cannot watch: {e}", source.name),
            }
        }
    }

    fn unwatch_source(&mut self, s: SourceId) {
        let source = &mut self.sources[s];
        if let (true, Some(fd)) = (source.watched, &source.fd) {
            let _ = self.events.remove(fd.as_fd());
        }
        source.watched = false;
    }

    fn set_source_fd(&mut self, s: SourceId, fd: Option<OwnedFd>) {
        self.unwatch_source(s);
        self.sources[s].fd = fd;
        self.watch_source(s);
    }

    fn pause(&mut self, s: SourceId) {
        self.unwatch_source(s);
        self.sources[s].paused = true;
    }

    fn resume_if_room(&mut self, s: SourceId) {
        let source = &self.sources[s];
        if !source.paused || source.quota == Some(0) || self.state == State::Done {
            return;
        }
        if self.relay.read_budget(s, RESUME_AT) >= RESUME_AT {
            self.sources[s].paused = false;
            self.watch_source(s);
        }
    }

    fn set_sink_watched(&mut self, k: SinkId, watched: bool) {
        let sink = &mut self.sinks[k];
        let Some(fd) = &sink.fd else {
            sink.watched = false;
            return;
        };
        if sink.watched == watched {
            return;
        }
        let result = if watched {
            self.events.add(fd.as_fd(), Token::Sink(k), Interest::Write)
        } else {
            self.events.remove(fd.as_fd())
        };
        match result {
            Ok(()) => sink.watched = watched,
            Err(e) => error!("{}: cannot watch: {e}", sink.name),
        }
    }

    fn set_sink_fd(&mut self, k: SinkId, fd: Option<OwnedFd>) {
        self.set_sink_watched(k, false);
        self.sinks[k].fd = fd;
    }

    // ---- Moving bytes -------------------------------------------------------

    fn read_source(&mut self, s: SourceId) {
        if let Some(moved) = self.splice_source(s) {
            self.sources[s].bytes += moved as u64;
            if let Some(q) = &mut self.sources[s].quota {
                *q = q.saturating_sub(moved);
            }
            if self.sources[s].quota == Some(0) {
                self.pause(s);
            }
            return;
        }
        let quota = self.sources[s].quota.unwrap_or(usize::MAX);
        let budget = self.relay.read_budget(s, quota.min(READ_CHUNK));
        if budget == 0 {
            self.pause(s);
            return;
        }
        let Some(fd) = &self.sources[s].fd else {
            return;
        };
        let n = match nix::unistd::read(fd.as_fd(), &mut self.scratch[..budget]) {
            Ok(n) => n,
            Err(Errno::EAGAIN | Errno::EINTR) => return,
            Err(e) => {
                error!(
                    "{}: read failed: {}; no longer reading it",
                    self.sources[s].name,
                    e.desc()
                );
                self.set_source_fd(s, None);
                return;
            }
        };
        if n == 0 {
            self.source_ended(s);
            return;
        }
        self.sources[s].bytes += n as u64;
        if let Some(q) = &mut self.sources[s].quota {
            *q = q.saturating_sub(n);
        }
        if matches!(self.sources[s].kind, SourceKind::Log(_)) {
            self.log_lines(s, n);
        } else {
            let sinks = &self.sinks;
            self.relay
                .ingest(s, &self.scratch[..n], |k, bytes| match &sinks[k] {
                    Sink {
                        fd: Some(fd),
                        refusing: false,
                        ..
                    } => write_some(fd.as_fd(), bytes),
                    _ => 0,
                });
            let fed: Vec<SinkId> = self.relay.sinks_of(s).collect();
            for k in fed {
                if !self.sinks[k].watched && self.relay.held_for(k) > 0 {
                    self.flush(k);
                }
                self.note_drops_of_sink(k);
            }
        }
        if self.sources[s].quota == Some(0) || self.relay.read_budget(s, 1) == 0 {
            self.pause(s);
        }
    }

    /// Moves bytes from `s` to its sinks without copying them through fifod:
    /// `splice` for one sink, `tee` into each then one `splice` to consume
    /// for several. Returns how many bytes were taken from the source, or
    /// `None` when the copying path must run instead (a sink holds bytes or
    /// is full, the route frames lines, the source is empty or ended).
    fn splice_source(&mut self, s: SourceId) -> Option<usize> {
        use nix::fcntl::{SpliceFFlags, splice, tee};
        if matches!(self.sources[s].kind, SourceKind::Log(_)) {
            return None;
        }
        let lanes = self.relay.zero_copy_lanes(s)?;
        let source_fd = self.sources[s].fd.as_ref()?;
        let mut sink_fds = Vec::with_capacity(lanes.len());
        for &(_, k) in &lanes {
            match &self.sinks[k] {
                Sink {
                    fd: Some(fd),
                    refusing: false,
                    ..
                } => sink_fds.push(fd.as_fd()),
                _ => return None,
            }
        }
        let quota = self.sources[s].quota.unwrap_or(usize::MAX);
        let len = self.relay.read_budget(s, quota.min(SPLICE_CHUNK));
        if len == 0 {
            return None;
        }
        let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
        if let [sink_fd] = sink_fds[..] {
            // EAGAIN does not say which side was not ready, and 0 may be an
            // end: the copying path reads and tells them apart.
            let moved = match splice(source_fd, None, sink_fd, None, len, flags) {
                Ok(n) if n > 0 => n,
                _ => return None,
            };
            self.relay.spliced(s, &lanes, &[moved], moved);
            return Some(moved);
        }
        let teed: Vec<usize> = sink_fds
            .iter()
            .map(|&fd| tee(source_fd, fd, len, SpliceFFlags::SPLICE_F_NONBLOCK).unwrap_or(0))
            .collect();
        let every_sink_has = teed.iter().copied().min().unwrap_or(0);
        let consumed = match (&self.dev_null, every_sink_has) {
            (_, 0) | (None, _) => 0,
            (Some(null), n) => splice(source_fd, None, null, None, n, flags).unwrap_or(0),
        };
        self.relay.spliced(s, &lanes, &teed, consumed);
        // Bytes some sinks took and others did not are read and held for
        // the others (and skipped for the rest) by the copying path.
        (consumed > 0).then_some(consumed)
    }

    /// A source's session ended: its writers all left, its process closed
    /// stdout, or fifod's stdin reached EOF.
    fn source_ended(&mut self, s: SourceId) {
        match self.sources[s].kind {
            SourceKind::Fifo {
                fifo,
                sessions: true,
            } => {
                // Open it afresh: the new fd waits quietly for the next writer.
                let fresh = self.footprint.fifos[fifo].reopen(Access::Read);
                match fresh {
                    Ok(fd) => self.set_source_fd(s, Some(fd)),
                    Err(e) => {
                        error!("fifo {}: {e}; no longer reading it", self.sources[s].name);
                        self.set_source_fd(s, None);
                    }
                }
            }
            // fifod holds the write side too: a writer's close is no EOF.
            SourceKind::Fifo {
                sessions: false, ..
            } => return,
            SourceKind::Log(_) => {
                self.flush_log_line(s);
                self.set_source_fd(s, None);
            }
            SourceKind::Stdout(_) | SourceKind::Stderr(_) => self.set_source_fd(s, None),
            SourceKind::Stdin => {
                info!("stdin reached EOF");
                self.set_source_fd(s, None);
            }
        }
        debug!("{}: end of session", self.sources[s].name);
        if self.relay.source_ended(s) {
            let fed: Vec<SinkId> = self.relay.sinks_of(s).collect();
            for k in fed {
                self.flush(k);
            }
        }
    }

    /// Writes what `sink` holds until it is empty, the pipe is full, or an
    /// end must wait; delivers ends that are due.
    fn flush(&mut self, k: SinkId) {
        loop {
            if self.sinks[k].refusing {
                self.relay.discard(k);
                break;
            }
            if self.relay.end_due(k) {
                if !self.deliver_end(k) {
                    break;
                }
                self.relay.end_delivered(k);
                continue;
            }
            let Some((lane, bytes)) = self.relay.pending(k) else {
                break;
            };
            let len = bytes.len();
            let Some(fd) = &self.sinks[k].fd else {
                if self.reopen_sink(k) {
                    continue;
                }
                break;
            };
            match nix::unistd::write(fd.as_fd(), bytes) {
                Ok(n) => {
                    self.relay.delivered(lane, n);
                    if n < len {
                        break;
                    }
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(Errno::EPIPE) => self.sink_closed(k),
                Err(e) => {
                    let lost = self.relay.discard(k);
                    error!(
                        "{}: write failed: {}; {lost} held bytes dropped",
                        self.sinks[k].name,
                        e.desc()
                    );
                    break;
                }
            }
        }
        let sink = &self.sinks[k];
        let waiting = sink.fd.is_some() && !sink.refusing && self.relay.pending(k).is_some();
        self.set_sink_watched(k, waiting);
        self.note_drops_of_sink(k);
        let feeding: Vec<SourceId> = self.relay.sources_feeding(k).collect();
        for s in feeding {
            self.resume_if_room(s);
        }
    }

    /// The reader of a sink went away for good (EPIPE): a process closed its
    /// stdin, or the consumer of fifod's stdout left.
    fn sink_closed(&mut self, k: SinkId) {
        let name = &self.sinks[k].name;
        match self.sinks[k].kind {
            SinkKind::Stdin(_) => warn!(
                "process {name} closed its stdin: what it did not take is dropped until it restarts"
            ),
            SinkKind::Stdout => {
                warn!("the reader of stdout went away: what is routed there is dropped")
            }
            SinkKind::Fifo(_) => warn!("fifo {name}: unexpected EPIPE"),
        }
        self.set_sink_fd(k, None);
        self.sinks[k].refusing = true;
    }

    /// Gives `sink` the end of a session. Returns false when it must wait.
    fn deliver_end(&mut self, k: SinkId) -> bool {
        match self.sinks[k].kind {
            SinkKind::Stdin(_) => {
                if self.sinks[k].fd.is_some() {
                    debug!(
                        "process {}: closing stdin at the end of a session",
                        self.sinks[k].name
                    );
                }
                self.set_sink_fd(k, None);
                true
            }
            SinkKind::Stdout => {
                self.set_sink_fd(k, None);
                self.sinks[k].refusing = true;
                true
            }
            SinkKind::Fifo(fifo) => {
                let Some(fd) = &self.sinks[k].fd else {
                    return true;
                };
                // The reader gets EOF once fifod's write side is closed and
                // the pipe is empty; closing earlier would make a reader
                // that comes later wait for the next session's writer.
                if pipe::queued_bytes(fd.as_fd()) > 0 {
                    let now = Instant::now();
                    let delay = match self.sinks[k].end_check {
                        Some((_, last)) => (last * 2).min(END_POLL_MAX),
                        None => END_POLL_FIRST,
                    };
                    self.sinks[k].end_check = Some((now + delay, delay));
                    return false;
                }
                self.sinks[k].end_check = None;
                match self.footprint.fifos[fifo].reopen(Access::Read) {
                    Ok(keep_alive) => {
                        self.sinks[k].keep_alive = Some(keep_alive);
                        self.set_sink_fd(k, None);
                        debug!("fifo {}: end of session delivered", self.sinks[k].name);
                        true
                    }
                    Err(e) => {
                        error!(
                            "fifo {}: {e}; its bytes are dropped from now on",
                            self.sinks[k].name
                        );
                        self.set_sink_fd(k, None);
                        self.sinks[k].refusing = true;
                        true
                    }
                }
            }
        }
    }

    /// Opens an output FIFO's write side again for a new session. A process
    /// that is down has no stdin: its bytes wait for the restart.
    fn reopen_sink(&mut self, k: SinkId) -> bool {
        let SinkKind::Fifo(fifo) = self.sinks[k].kind else {
            return false;
        };
        match self.footprint.fifos[fifo].reopen(Access::ReadWrite) {
            Ok(fd) => {
                self.sinks[k].fd = Some(fd);
                self.sinks[k].keep_alive = None;
                true
            }
            Err(e) => {
                error!(
                    "fifo {}: {e}; its bytes are dropped from now on",
                    self.sinks[k].name
                );
                self.sinks[k].refusing = true;
                false
            }
        }
    }

    fn log_lines(&mut self, s: SourceId, n: usize) {
        let source = &mut self.sources[s];
        source.partial.extend_from_slice(&self.scratch[..n]);
        while let Some(end) = source.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = source.partial.drain(..=end).collect();
            warn!(
                "{}: {}",
                source.name,
                String::from_utf8_lossy(&line[..line.len() - 1])
            );
        }
        if source.partial.len() > MAX_LOG_LINE {
            self.flush_log_line(s);
        }
    }

    fn flush_log_line(&mut self, s: SourceId) {
        let source = &mut self.sources[s];
        if !source.partial.is_empty() {
            warn!(
                "{}: {}",
                source.name,
                String::from_utf8_lossy(&source.partial)
            );
            source.partial.clear();
        }
    }

    // ---- Processes ----------------------------------------------------------

    fn start_child(&mut self, c: usize) {
        let ends = self.ends[c];
        let wiring = Wiring {
            stdin: ends.stdin.is_some(),
            stdout: ends.stdout.is_some(),
            stderr: ends.stderr.is_some(),
        };
        let now = Instant::now();
        match child::spawn(&self.children[c].spec, wiring) {
            Ok((pid, pipes)) => {
                info!("started process {} (pid {pid})", self.children[c].name());
                self.children[c].started(pid, now);
                if let Some(k) = ends.stdin {
                    self.set_sink_fd(k, pipes.stdin);
                    self.sinks[k].refusing = false;
                    self.flush(k);
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
            }
            Err(e) => {
                error!("cannot start process {}: {e}", self.children[c].name());
                self.child_exited(c, None, Exit::SpawnFailed);
            }
        }
    }

    fn on_children_exited(&mut self) {
        for (pid, how) in child::reap() {
            match self.children.iter().position(|c| c.pid == Some(pid)) {
                Some(c) => self.child_exited(c, Some(pid), how),
                None => debug!("reaped pid {pid}, {how}"),
            }
        }
    }

    fn child_exited(&mut self, c: usize, pid: Option<nix::unistd::Pid>, how: Exit) {
        let stopping = self.state != State::Running;
        let now = Instant::now();
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
            if restart_at.is_none() {
                self.sinks[k].refusing = true;
                let lost = self.relay.discard(k);
                if lost > 0 {
                    warn!("process {name}: {lost} bytes held for its stdin are dropped");
                }
                self.flush(k);
            }
        }
    }

    // ---- Timers and shutdown ------------------------------------------------

    fn next_timeout(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut next = self.drop_logs.iter().filter_map(|d| d.due).min();
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        };
        for child in &self.children {
            consider(child.restart_at);
        }
        for sink in &self.sinks {
            consider(sink.end_check.map(|(at, _)| at));
        }
        consider(self.control.as_ref().and_then(ControlServer::next_deadline));
        match self.state {
            State::Draining { deadline, .. } => {
                consider(Some(deadline));
                consider(Some(now + DRAIN_POLL));
            }
            State::Killing { next, .. } => consider(Some(next)),
            State::Running | State::Done => {}
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
        for k in 0..self.sinks.len() {
            if self.sinks[k].end_check.is_some_and(|(at, _)| at <= now) {
                self.flush(k);
            }
        }
        if let Some(control) = &mut self.control {
            for slot in control.expired(now) {
                debug!("dropping a status client that did not read its answer");
                control.close(slot);
            }
        }
        if self.state == State::Running {
            for c in 0..self.children.len() {
                if self.children[c].restart_at.is_some_and(|at| at <= now) {
                    self.start_child(c);
                }
            }
        }
        self.advance_shutdown(now);
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
                    stdins_closed: false,
                };
                for child in &mut self.children {
                    child.restart_at = None;
                }
                // Take what writers already put in the inputs, and no more.
                for s in 0..self.sources.len() {
                    if matches!(
                        self.sources[s].kind,
                        SourceKind::Fifo { .. } | SourceKind::Stdin
                    ) {
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
            }
            State::Draining { .. } => {
                info!("received {name} again: skipping the rest of the drain");
                self.stop_children(Instant::now());
            }
            State::Killing { .. } | State::Done => {}
        }
    }

    fn advance_shutdown(&mut self, now: Instant) {
        match self.state {
            State::Running | State::Done => {}
            State::Draining {
                deadline,
                stdins_closed,
            } => {
                let inputs_done = self.sources.iter().all(|s| s.quota.is_none_or(|q| q == 0));
                if !stdins_closed && inputs_done {
                    // Writers that left a line unfinished get it delivered as it is.
                    for s in 0..self.sources.len() {
                        if matches!(
                            self.sources[s].kind,
                            SourceKind::Fifo { .. } | SourceKind::Stdin
                        ) {
                            self.relay.flush_lines_of(s);
                            let fed: Vec<SinkId> = self.relay.sinks_of(s).collect();
                            for k in fed {
                                self.flush(k);
                            }
                        }
                    }
                    let held_for_children = self
                        .ends
                        .iter()
                        .filter_map(|e| e.stdin)
                        .any(|k| self.relay.held_for(k) > 0 && !self.sinks[k].refusing);
                    if !held_for_children {
                        self.close_child_stdins();
                        self.state = State::Draining {
                            deadline,
                            stdins_closed: true,
                        };
                    }
                }
                if self.drained() {
                    info!("drain complete");
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

    fn close_child_stdins(&mut self) {
        for c in 0..self.ends.len() {
            if let Some(k) = self.ends[c].stdin {
                self.set_sink_fd(k, None);
                self.sinks[k].refusing = true;
            }
        }
    }

    /// SIGTERM to every running process's group; SIGKILL follows.
    fn stop_children(&mut self, now: Instant) {
        self.close_child_stdins();
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

    fn drained(&self) -> bool {
        let State::Draining {
            stdins_closed: true,
            ..
        } = self.state
        else {
            return false;
        };
        self.children.iter().all(|c| c.pid.is_none())
            && self.sources.iter().all(|s| match s.kind {
                SourceKind::Fifo { .. } | SourceKind::Stdin => s.quota.is_none_or(|q| q == 0),
                _ => s.fd.is_none(),
            })
            && self.relay.held_total() == self.refused_held()
            && self.sinks.iter().all(|k| match (&k.kind, &k.fd) {
                (SinkKind::Fifo(_), Some(fd)) => pipe::queued_bytes(fd.as_fd()) == 0,
                _ => true,
            })
    }

    /// Bytes held for sinks that will never take them.
    fn refused_held(&self) -> usize {
        (0..self.sinks.len())
            .filter(|&k| self.sinks[k].refusing)
            .map(|k| self.relay.held_for(k))
            .sum()
    }

    /// Reports what was relayed and what is left, makes sure no process is
    /// left, then removes the footprint.
    fn finish(&mut self) {
        for child in &mut self.children {
            if let Some(pid) = child.pid.take() {
                child::signal_group(pid, Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(pid, None);
            }
        }
        for l in 0..self.relay.lanes().len() {
            let lane = &self.relay.lanes()[l];
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
            let unread = match (&sink.kind, sink.fd.as_ref().or(sink.keep_alive.as_ref())) {
                (SinkKind::Fifo(_), Some(fd)) => pipe::queued_bytes(fd.as_fd()),
                _ => 0,
            };
            if held + unread > 0 {
                warn!(
                    "{}: {} bytes undelivered ({held} held by fifod, {unread} unread in the pipe)",
                    sink.name,
                    held + unread
                );
            }
        }
        for source in &self.sources {
            let left = source
                .fd
                .as_ref()
                .map_or(0, |fd| pipe::queued_bytes(fd.as_fd()));
            if left > 0 {
                warn!("{}: {left} bytes left unread", source.name);
            }
        }
        self.footprint.remove();
        info!("stopped");
    }

    // ---- Drop reports -------------------------------------------------------

    fn note_drops_of_sink(&mut self, k: SinkId) {
        let lanes: Vec<LaneId> = self.relay.lanes_of_sink(k).to_vec();
        for l in lanes {
            if self.relay.lanes()[l].stats().dropped > self.drop_logs[l].reported {
                self.note_drops(l);
            }
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
        format!("route[{}] -> {}", lane.route, self.sinks[lane.sink].name)
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
