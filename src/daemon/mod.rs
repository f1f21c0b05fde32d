//! `fifod run`: sets up the footprint on disk, starts the processes, runs the
//! event loop that moves bytes between endpoints, then drains and cleans up.
//!
//! This is where the pieces meet: `fifo` owns the paths, `child` starts and
//! reaps processes, `relay` owns the held bytes and the accounting,
//! `event_loop` owns epoll; the daemon performs the reads and writes the
//! relay asks for and keeps every endpoint's fd.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::stat::{Mode as NixMode, SFlag, fstat, umask};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::child::{self, Supervised};
use crate::config::{Config, Eof, Framing, Role, SinkRef, SourceRef, StderrMode};
use crate::control::ControlServer;
use crate::event_loop::{Event, EventLoop, Interest, Token};
use crate::fifo::{Access, Footprint, FsError, ManagedFifo};
use crate::notify::Notifier;
use crate::pipe::{self, Resized};
use crate::relay::{Relay, RouteSpec, SinkId, SourceId};
use crate::units::Size;
use crate::watch::DirWatch;

mod diff;
mod dirs;
mod drops;
mod io;
mod journal;
mod lanes;
mod last_reload;
mod line_log;
mod loader;
mod processes;
mod reload;
mod replaced;
mod retiring;
mod shutdown;
mod slots;
mod status;
mod stored;
mod timers;
mod upgrade;

use slots::Slots;

/// Largest single read from a source.
const READ_CHUNK: usize = 128 * 1024;
/// Largest single splice or tee: it moves pages, not bytes, so it may be
/// larger than a read.
const SPLICE_CHUNK: usize = 1024 * 1024;
/// A paused source is read again once every blocking lane it feeds has this
/// much room, so that backpressure does not degrade into tiny reads.
const RESUME_AT: usize = 4096;
/// How often a reload tries again a read that got nothing while bytes
/// wait (an interrupted read), before it carries a lane's lead over.
const SETTLE_TRIES: u32 = 8;
/// FIFOs' pipe size when the config sets none and the limits allow it:
/// fewer wake-ups per byte make relaying several times faster (BENCHMARKS.md).
const AUTO_PIPE_SIZE: usize = 1024 * 1024;
/// How often drop counts may be logged, per lane.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// While draining, how often to look whether readers emptied the outputs
/// (the kernel does not announce that a pipe became empty).
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// An output FIFO gets its end once its reader has emptied it; how soon to
/// look again, doubling up to the maximum.
const END_POLL_FIRST: Duration = Duration::from_millis(10);
const END_POLL_MAX: Duration = Duration::from_secs(1);
/// How long the control socket rests after an accept error.
const CONTROL_RETRY: Duration = Duration::from_secs(1);
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
    /// The node of input FIFO `fifo` that someone removed or replaced, read
    /// until the writers still connected to it leave; it feeds the routes
    /// of the FIFO made again in its place.
    Detached { fifo: usize },
}

impl SourceKind {
    /// Whether others write into it (a FIFO, its removed node, fifod's
    /// stdin): at stop, fifod takes what is in it then and no more. A
    /// process's output is read to its end instead.
    fn written_by_others(self) -> bool {
        match self {
            SourceKind::Fifo { .. } | SourceKind::Detached { .. } | SourceKind::Stdin => true,
            SourceKind::Stdout(_) | SourceKind::Stderr(_) | SourceKind::Log(_) => false,
        }
    }

    /// Whether its lines go to fifod's log rather than along a route.
    fn is_logged(self) -> bool {
        match self {
            SourceKind::Log(_) => true,
            SourceKind::Fifo { .. }
            | SourceKind::Detached { .. }
            | SourceKind::Stdin
            | SourceKind::Stdout(_)
            | SourceKind::Stderr(_) => false,
        }
    }
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

impl Source {
    fn new(kind: SourceKind, name: String) -> Source {
        Source {
            kind,
            name,
            fd: None,
            watched: false,
            paused: false,
            quota: None,
            partial: Vec::new(),
            bytes: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// Whether it takes bytes.
    intake: Intake,
    /// An output FIFO's end waits for its reader to empty it: when to look.
    end_check: Option<(Instant, Duration)>,
}

/// Whether a sink takes bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intake {
    /// Bytes are written to its fd, or wait for one (a process restarting,
    /// an output FIFO between sessions).
    Open,
    /// It cannot take bytes (its process closed stdin or will not run again,
    /// fifod's stdout is not a pipe or its reader left): what it holds and
    /// what comes is dropped, and counted.
    Refusing,
    /// fifod is stopping and will not write to it again: what it holds is
    /// reported as undelivered.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// Taking what the inputs hold, ending each process's input once what
    /// feeds it ended, delivering their output, until everything is out or
    /// `deadline`.
    Draining {
        deadline: Instant,
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
    /// The pipes in which byte routes' lanes hold their bytes.
    lane_pipes: lanes::LanePipes,
    /// Every endpoint in a slot it keeps while it lives (`slots`): the
    /// relay and epoll know it by that index.
    sources: Slots<Source>,
    sinks: Slots<Sink>,
    /// The sinks with an `end_check`, so that the loop's timers look at
    /// those alone.
    ending: HashSet<SinkId>,
    children: Vec<Supervised>,
    ends: Vec<ProcessEnds>,
    drop_logs: drops::DropLogs,
    scratch: Vec<u8>,
    /// Why the last zero-copy transfer moved nothing, if it says.
    splice_stop: Option<io::SpliceStop>,
    state: State,
    control: Option<ControlServer>,
    /// The control socket is not watched until then (after an error).
    control_retry_at: Option<Instant>,
    /// The control socket is not watched: every answer slot is taken.
    control_full: bool,
    started_at: Instant,
    /// Where bytes every sink already has (by `tee`) are spliced to be
    /// consumed from their source without a copy.
    dev_null: Option<OwnedFd>,
    /// The service manager, when there is one.
    notifier: Notifier,
    /// Where the config is read again on SIGHUP.
    config_path: PathBuf,
    /// How the last reload ended (a failure shows until one succeeds).
    last_reload: last_reload::LastReload,
    /// Output FIFOs a reload removed, until their reader has everything.
    retiring: retiring::RetiringOutputs,
    /// Processes a reload stopped, until they are reaped.
    replaced: replaced::ReplacedProcesses,
    /// Tells when a FIFO's directory changed (one may have been removed).
    dir_watch: Option<DirWatch>,
    /// Reads and checks the config again on SIGHUP, off the loop.
    loader: loader::ConfigLoader,
    /// The service manager's fd store, where what holds bytes outlives a
    /// crash (`stored.rs`).
    fd_store: crate::fdstore::FdStore,
    /// How each FIFO's fd in the store is held, by FIFO name.
    fifo_held: HashMap<String, stored::Held>,
    /// Fanned-out sources' journals in the store, by source name.
    journals: HashMap<String, journal::Journal>,
    /// Line routes' sources' logs in the store, by source name.
    line_logs: HashMap<String, line_log::LineLog>,
    /// Sources whose logs may give out lines now (their sinks took some).
    line_logs_due: Vec<SourceId>,
    /// Upgrades (`fifod upgrade`) since fifod was started, carried over.
    upgrades: u64,
    /// Upgrades that failed in this process, and why the last one did.
    upgrade_failures: u64,
    upgrade_error: Option<String>,
    /// SIGUSR2 came: upgrade once the batch of events is handled.
    upgrade_requested: bool,
    /// Processes an upgrade handed over, by name, with their pipes: they
    /// are adopted rather than started.
    adopted: HashMap<String, nix::unistd::Pid>,
    /// Of those, the ones a crash left behind: not fifod's children, their
    /// exits are seen through a pidfd (`pidfds`, by process index).
    foreign: HashSet<String>,
    pidfds: HashMap<usize, OwnedFd>,
    /// The names each running process's pipes are stored under.
    running_stored: HashMap<usize, Vec<String>>,
    handed_processes: std::collections::HashMap<String, OwnedFd>,
}

/// The signals the loop takes.
pub(crate) const LOOP_SIGNALS: [libc::c_int; 5] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGUSR2,
    libc::SIGCHLD,
];

fn signal_name(signal: libc::c_int) -> &'static str {
    Signal::try_from(signal).map_or("a signal", Signal::as_str)
}

/// Runs the daemon until SIGTERM or SIGINT and a clean shutdown.
pub fn run(config: Config, config_path: PathBuf) -> Result<(), RunError> {
    child::keep_inherited_fds_from_children();
    child::become_subreaper();
    ensure_fd_limit(&config)?;
    // Handlers first: a SIGTERM during start must not kill fifod before it
    // can remove what it made.
    let events = EventLoop::new(&LOOP_SIGNALS)
        .map_err(|e| RunError::Start(format!("cannot set up the event loop: {e}")))?;
    // An upgrade executed this image with them blocked (`upgrade.rs`): those
    // that came meanwhile are taken now.
    let _ = upgrade::loop_signals().thread_unblock();
    // Nodes are created private and given their exact mode by fchmod; the
    // umask must not narrow that first step. Children get the umask back.
    let passed = crate::activation::passed_fds(&config).map_err(RunError::Start)?;
    let old_umask = umask(NixMode::from_bits_truncate(0o077));
    let footprint = Footprint::create(&config, passed.fifos);
    umask(old_umask);
    let loader = loader::ConfigLoader::new()
        .map_err(|e| RunError::Start(format!("cannot set up reloading: {e}")))?;
    let mut daemon = Daemon::new(config, config_path, footprint?, events, loader)?;
    daemon.start_all(passed.stored);
    daemon.run_loop();
    Ok(())
}

/// fds fifod needs beyond those of its endpoints: epoll, signal pipes,
/// directories, the lock, the control socket and its clients, /dev/null.
const BASE_FDS: u64 = 64;

/// Makes sure the config fits in the fd limit, raising the soft limit up to
/// the hard one if need be, so that a config too large fails at start with a
/// clear message rather than in the middle of the run.
fn ensure_fd_limit(config: &Config) -> Result<(), RunError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    // Each FIFO may briefly hold a second fd (an end of session, a fresh
    // reader); each process has up to three pipe ends.
    let needed = BASE_FDS + 2 * config.fifos.len() as u64 + 3 * config.processes.len() as u64;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return Ok(());
    };
    if soft >= needed {
        return Ok(());
    }
    if hard >= needed && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        info!("raised the open-file limit from {soft} to {hard}");
        return Ok(());
    }
    Err(RunError::Start(format!(
        "the config needs about {needed} file descriptors, but RLIMIT_NOFILE allows {hard}; \
         raise it (ulimit -n, or LimitNOFILE= in the unit)"
    )))
}

/// Whether fifod's own fd 0 or 1 is something epoll can wait on.
fn is_pipe_or_socket(fd: BorrowedFd<'_>) -> bool {
    fstat(fd).is_ok_and(|st| {
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        kind == SFlag::S_IFIFO || kind == SFlag::S_IFSOCK
    })
}

/// Takes fifod's own fd 0 or 1 as an endpoint, if it is a pipe or socket:
/// the stream moves to a new close-on-exec fd that only fifod holds, and
/// `/dev/null` takes its number. Closing the endpoint then really ends the
/// stream (the consumer of a forwarded `stdout` sees EOF), and nothing
/// written to fd 1 by accident can slip into it.
fn take_std_stream(raw: libc::c_int) -> Option<OwnedFd> {
    // SAFETY: fd 0 and 1 stay open for the life of the process (fstat below
    // refuses a closed one), and the borrow ends before they are replaced.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) };
    if !is_pipe_or_socket(fd) {
        return None;
    }
    let owned = fd.try_clone_to_owned().ok()?;
    let flags = nix::fcntl::fcntl(&owned, nix::fcntl::FcntlArg::F_GETFL).ok()?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&owned, nix::fcntl::FcntlArg::F_SETFL(flags)).ok()?;
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        Ok(null) => {
            // SAFETY: dup2 onto fd 0 or 1, which no Rust object owns; the
            // source is a live File borrowed for the call.
            if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), raw) } < 0 {
                warn!(
                    "cannot detach fd {raw}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        Err(e) => warn!("cannot open /dev/null to detach fd {raw}: {e}"),
    }
    Some(owned)
}

/// A config's endpoints and routes as the daemon and the relay index them,
/// before any fd is attached.
#[derive(Debug)]
struct Tables {
    sources: Vec<Source>,
    sinks: Vec<Sink>,
    ends: Vec<ProcessEnds>,
    routes: Vec<RouteSpec>,
}

/// An endpoint as a route names it, borrowed from the config: looked up
/// without an allocation per endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Named<'a> {
    Fifo(&'a str),
    Process(&'a str),
    Stderr(&'a str),
    /// fifod's own stdin (as a source) or stdout (as a sink).
    Own,
}

impl<'a> Named<'a> {
    fn source(r: &'a SourceRef) -> Named<'a> {
        match r {
            SourceRef::Fifo(name) => Named::Fifo(name),
            SourceRef::Process(name) => Named::Process(name),
            SourceRef::Stderr(name) => Named::Stderr(name),
            SourceRef::Stdin => Named::Own,
        }
    }

    fn sink(r: &'a SinkRef) -> Named<'a> {
        match r {
            SinkRef::Fifo(name) => Named::Fifo(name),
            SinkRef::Process(name) => Named::Process(name),
            SinkRef::Stdout => Named::Own,
        }
    }
}

impl Tables {
    fn new(config: &Config) -> Tables {
        // Which endpoints routes name, and which sources' ends they
        // forward, looked up in sets: a config may have thousands.
        let mut named_from: HashSet<Named<'_>> = HashSet::default();
        let mut named_to: HashSet<Named<'_>> = HashSet::default();
        let mut forwarded: HashSet<Named<'_>> = HashSet::default();
        for route in &config.routes {
            named_from.extend(route.from.iter().map(Named::source));
            named_to.extend(route.to.iter().map(Named::sink));
            if route.eof == Eof::Forward {
                forwarded.extend(route.from.iter().map(Named::source));
            }
        }
        let endpoints = config.fifos.len() + 3 * config.processes.len() + 1;
        let mut sources = Vec::with_capacity(endpoints);
        let mut sinks = Vec::with_capacity(endpoints);
        let mut source_ids: HashMap<Named<'_>, SourceId> = HashMap::default();
        let mut sink_ids: HashMap<Named<'_>, SinkId> = HashMap::default();
        source_ids.reserve(endpoints);
        sink_ids.reserve(endpoints);
        let new_source = Source::new;
        let new_sink = |kind, name: String| Sink {
            kind,
            name,
            fd: None,
            keep_alive: None,
            watched: false,
            intake: Intake::Open,
            end_check: None,
        };

        for (i, spec) in config.fifos.iter().enumerate() {
            let named = Named::Fifo(&spec.name);
            match spec.role {
                Role::Input => {
                    let sessions = forwarded.contains(&named);
                    source_ids.insert(named, sources.len());
                    sources.push(new_source(
                        SourceKind::Fifo { fifo: i, sessions },
                        spec.name.clone(),
                    ));
                }
                Role::Output => {
                    sink_ids.insert(named, sinks.len());
                    sinks.push(new_sink(SinkKind::Fifo(i), spec.name.clone()));
                }
                Role::Unrouted => info!(
                    "fifo {} is in no route: it is held open but nothing is relayed",
                    spec.name
                ),
            }
        }
        let mut ends = Vec::with_capacity(config.processes.len());
        for (c, spec) in config.processes.iter().enumerate() {
            let mut e = ProcessEnds::default();
            let name = &spec.name;
            if named_to.contains(&Named::Process(name)) {
                e.stdin = Some(sinks.len());
                sink_ids.insert(Named::Process(name), sinks.len());
                sinks.push(new_sink(SinkKind::Stdin(c), name.clone()));
            }
            if named_from.contains(&Named::Process(name)) {
                e.stdout = Some(sources.len());
                source_ids.insert(Named::Process(name), sources.len());
                sources.push(new_source(SourceKind::Stdout(c), name.clone()));
            }
            if spec.stderr == StderrMode::Separate && named_from.contains(&Named::Stderr(name)) {
                e.stderr = Some(sources.len());
                source_ids.insert(Named::Stderr(name), sources.len());
                sources.push(new_source(SourceKind::Stderr(c), format!("{name}.stderr")));
            } else if spec.stderr == StderrMode::Log {
                e.stderr = Some(sources.len());
                sources.push(new_source(SourceKind::Log(c), format!("{name}.stderr")));
            }
            ends.push(e);
        }
        if named_from.contains(&Named::Own) {
            source_ids.insert(Named::Own, sources.len());
            sources.push(new_source(SourceKind::Stdin, "stdin".to_string()));
        }
        if named_to.contains(&Named::Own) {
            sink_ids.insert(Named::Own, sinks.len());
            sinks.push(new_sink(SinkKind::Stdout, "stdout".to_string()));
        }

        let routes: Vec<RouteSpec> = config
            .routes
            .iter()
            .map(|r| RouteSpec {
                sources: r
                    .from
                    .iter()
                    .filter_map(|e| source_ids.get(&Named::source(e)).copied())
                    .collect(),
                sinks: r
                    .to
                    .iter()
                    .filter_map(|e| sink_ids.get(&Named::sink(e)).copied())
                    .collect(),
                buffer: usize::try_from(r.buffer.bytes()).unwrap_or(usize::MAX),
                when_full: r.when_full,
                forward_eof: r.eof == Eof::Forward,
                max_line: (r.framing == Framing::Lines)
                    .then(|| usize::try_from(r.max_line.bytes()).unwrap_or(usize::MAX)),
            })
            .collect();
        Tables {
            sources,
            sinks,
            ends,
            routes,
        }
    }

    /// Gives fifod's own stdin and stdout endpoints their streams (those
    /// that have none yet: a reload carries them over).
    fn take_std_streams(&mut self) {
        for source in &mut self.sources {
            if source.kind == SourceKind::Stdin && source.fd.is_none() {
                source.fd = take_std_stream(libc::STDIN_FILENO);
                if source.fd.is_none() {
                    info!("stdin is not a pipe: the stdin endpoint carries nothing");
                }
            }
        }
        for sink in &mut self.sinks {
            if sink.kind == SinkKind::Stdout && sink.fd.is_none() {
                sink.fd = take_std_stream(libc::STDOUT_FILENO);
                if sink.fd.is_none() {
                    info!(
                        "stdout is not a pipe: the stdout endpoint carries nothing (bytes are counted as dropped)"
                    );
                    sink.intake = Intake::Refusing;
                }
            }
        }
    }
}

/// The fd an input FIFO is read through. With `sessions`, read-only, so
/// that the end of its writers shows: Linux reports hang-up to a reader that
/// saw a writer leave, fifod's own write side included, so a first reader is
/// opened, the write side (the start's fd, or `previous`) closed, and a
/// second reader, which waits quietly for the first real writer, kept. The
/// pipe is never without an fd, so nothing in it is lost.
fn input_fd(
    managed: &mut ManagedFifo,
    sessions: bool,
    previous: Vec<OwnedFd>,
) -> Result<OwnedFd, FsError> {
    if !sessions {
        return read_write_fd(managed);
    }
    let first = managed.reopen(Access::Read)?;
    drop(managed.take_fd());
    drop(previous);
    let quiet = managed.reopen(Access::Read);
    drop(first);
    quiet
}

/// A read-write fd on the FIFO: the one opened at start if the daemon has
/// not taken it yet, else a new one. Outputs are written through it, inputs
/// whose ends are not forwarded read from it.
fn read_write_fd(managed: &mut ManagedFifo) -> Result<OwnedFd, FsError> {
    match managed.take_fd() {
        Some(fd) => Ok(fd),
        None => managed.reopen(Access::ReadWrite),
    }
}

impl Daemon {
    fn new(
        config: Config,
        config_path: PathBuf,
        mut footprint: Footprint,
        events: EventLoop,
        loader: loader::ConfigLoader,
    ) -> Result<Daemon, RunError> {
        let mut tables = Tables::new(&config);
        tables.take_std_streams();
        let Tables {
            mut sources,
            mut sinks,
            ends,
            routes,
        } = tables;
        let relay = Relay::new(&routes, sources.len(), sinks.len());
        let drop_logs = drops::DropLogs::new(&relay);

        // Take the FIFOs' fds. An input whose ends are forwarded is held
        // read-only: a write side of fifod's own would hide its writers' end.
        let mut fail = None;
        for source in &mut sources {
            if let SourceKind::Fifo { fifo, sessions } = source.kind {
                source.fd = input_fd(&mut footprint.fifos[fifo], sessions, Vec::new())
                    .map_err(|e| fail = Some(e))
                    .ok();
            }
        }
        for sink in &mut sinks {
            if let SinkKind::Fifo(fifo) = sink.kind {
                sink.fd = read_write_fd(&mut footprint.fifos[fifo])
                    .map_err(|e| fail = Some(e))
                    .ok();
            }
        }
        let children = config
            .processes
            .iter()
            .cloned()
            .map(Supervised::new)
            .collect();
        let control_group = config.daemon.control_group;
        let control = footprint
            .take_control()
            .map(|listener| ControlServer::new(listener, control_group));
        let mut daemon = Daemon {
            config,
            footprint,
            events,
            lane_pipes: lanes::LanePipes::new(relay.lanes().len()),
            relay,
            sources: Slots::from_values(sources),
            sinks: Slots::from_values(sinks),
            ending: HashSet::default(),
            children,
            ends,
            drop_logs,
            scratch: vec![0; READ_CHUNK],
            splice_stop: None,
            state: State::Running,
            control,
            control_retry_at: None,
            control_full: false,
            started_at: Instant::now(),
            dev_null: std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .ok()
                .map(OwnedFd::from),
            notifier: Notifier::from_env(),
            fd_store: crate::fdstore::FdStore::from_env(),
            fifo_held: HashMap::default(),
            journals: HashMap::default(),
            line_logs: HashMap::default(),
            line_logs_due: Vec::new(),
            upgrades: std::env::var("FIFOD_UPGRADES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            upgrade_failures: 0,
            upgrade_error: None,
            upgrade_requested: false,
            adopted: HashMap::default(),
            foreign: HashSet::default(),
            pidfds: HashMap::default(),
            running_stored: HashMap::default(),
            handed_processes: std::collections::HashMap::new(),
            config_path,
            last_reload: last_reload::LastReload::default(),
            retiring: retiring::RetiringOutputs::default(),
            replaced: replaced::ReplacedProcesses::default(),
            dir_watch: None,
            loader,
        };
        if let Some(e) = fail {
            daemon.footprint.undo_start();
            return Err(e.into());
        }
        daemon.resize_pipes(None);
        Ok(daemon)
    }

    /// Gives every FIFO the configured `pipe_size`, or the automatic one;
    /// with `only`, just the FIFOs at those indices (a reload's new ones).
    fn resize_pipes(&self, only: Option<&HashSet<usize>>) {
        let (size, asked) = match self.config.daemon.pipe_size {
            Some(size) => (size, true),
            None => match self.auto_pipe_size() {
                Some(size) => (size, false),
                None => return,
            },
        };
        // A FIFO systemd passed has the size its socket unit gave it
        // (`PipeSize=`), unless the config asks for one.
        let ours = |fifo: usize| {
            only.is_none_or(|only| only.contains(&fifo))
                && (asked || !self.footprint.fifos[fifo].passed)
        };
        let source_fds = self.sources.values().filter_map(|s| match s.kind {
            SourceKind::Fifo { fifo, .. } if ours(fifo) => Some((&s.name, s.fd.as_ref())),
            _ => None,
        });
        let sink_fds = self.sinks.values().filter_map(|k| match k.kind {
            SinkKind::Fifo(fifo) if ours(fifo) => Some((&k.name, k.fd.as_ref())),
            _ => None,
        });
        for (name, fd) in source_fds.chain(sink_fds) {
            if let Some(fd) = fd {
                resize_pipe(name, fd.as_fd(), size, asked);
            }
        }
        for (i, fifo) in self.footprint.fifos.iter().enumerate() {
            if let (true, Some(fd)) = (ours(i), fifo.fd()) {
                resize_pipe(&fifo.name, fd, size, asked);
            }
        }
    }

    /// Without `pipe_size`: `AUTO_PIPE_SIZE` (at most `fs.pipe-max-size`)
    /// where the FIFOs' share of the user's pipe budget has room for it
    /// (`pipe::budget_share`), else the kernel's size.
    fn auto_pipe_size(&self) -> Option<Size> {
        let size =
            pipe::fs_limit("pipe-max-size").map_or(AUTO_PIPE_SIZE, |max| max.min(AUTO_PIPE_SIZE));
        let fifos = self.footprint.fifos.iter().filter(|f| !f.passed).count();
        if let Some(share) = pipe::budget_share()
            && fifos.saturating_mul(size) > share
        {
            info!(
                "FIFOs keep the kernel's pipe size: {fifos} at {} KiB would take more than a \
                 quarter of this user's pipe budget (fs.pipe-user-pages-soft); pipe_size sets it",
                size / 1024
            );
            return None;
        }
        Some(Size(size as u64))
    }

    fn start_all(&mut self, stored: crate::fdstore::Stored) {
        // Before anything is read: bytes held before a crash go first.
        self.take_back(stored);
        for s in self.sources.ids() {
            self.watch_source(s);
        }
        if let Some(control) = &self.control
            && let Err(e) = self
                .events
                .add(control.listener_fd(), Token::Control, Interest::Read)
        {
            error!("cannot watch the control socket: {e}; fifod status will not answer");
        }
        if let Err(e) = self
            .events
            .add(self.loader.fd(), Token::Loaded, Interest::Read)
        {
            warn!("cannot watch config loads: {e}; reloads read the config on the loop");
            self.loader.load_inline();
        }
        match DirWatch::new() {
            Ok(watch) => {
                if let Err(e) = self.events.add(watch.fd(), Token::Dirs, Interest::Read) {
                    warn!("cannot watch the FIFOs' directories: {e}");
                }
                self.dir_watch = Some(watch);
                self.watch_dirs(None);
            }
            Err(e) => warn!("cannot watch the FIFOs' directories: {e}"),
        }
        for c in 0..self.children.len() {
            if !self.adopt_child(c) {
                self.start_child(c);
            }
        }
        self.release_unadopted();
        // One of them may have exited while the binary was executed, before
        // this image could hear of it (its SIGCHLD is not waited for).
        self.on_children_exited();
        info!(
            "ready: {} fifos, {} processes, {} routes in {}",
            self.footprint.fifos.len(),
            self.children.len(),
            self.config.routes.len(),
            self.config.daemon.dir.display()
        );
        let line = self.status_line();
        self.notifier.ready(&line);
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
            if std::mem::take(&mut self.upgrade_requested) {
                self.upgrade();
            }
            self.give_out_due();
            self.unstore_lane_pipes();
            if !events.is_empty() && self.state == State::Running {
                self.offer_status();
            }
        }
        self.finish();
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Signal(libc::SIGHUP) => {
                self.last_reload.requested();
                self.reload();
            }
            Event::Signal(libc::SIGCHLD) => self.on_children_exited(),
            // After the rest of the batch: a stop in it comes first.
            Event::Signal(libc::SIGUSR2) => self.upgrade_requested = true,
            Event::Signal(signal) => self.on_stop_signal(signal),
            // An event for an endpoint that went away or was replaced since
            // the batch was read names a generation its slot no longer has.
            Event::Ready {
                token: Token::Source(key),
                ..
            } => {
                if let Some(s) = self.sources.live(key) {
                    self.read_source(s);
                }
            }
            Event::Ready {
                token: Token::Sink(key),
                ..
            } => {
                if let Some(k) = self.sinks.live(key) {
                    self.flush(k);
                }
            }
            Event::Ready {
                token: Token::Control,
                ..
            } => self.answer_status(),
            Event::Ready {
                token: Token::Process(c),
                ..
            } => self.foreign_exited(c),
            Event::Ready {
                token: Token::Dirs, ..
            } => self.on_dirs_changed(),
            Event::Ready {
                token: Token::Loaded,
                ..
            } => self.on_config_loaded(),
            Event::Ready {
                token: Token::Client(slot),
                ..
            } => {
                if let Some(control) = &mut self.control {
                    // A finished client's fd is closed, which ends its watch.
                    let _ = control.write(slot);
                }
                self.control_has_room();
            }
        }
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

/// Gives `fd`'s pipe `size` bytes; `asked`: the config says so, and what
/// the kernel does not allow is worth a warning.
fn resize_pipe(name: &str, fd: BorrowedFd<'_>, size: Size, asked: bool) {
    let want = usize::try_from(size.bytes()).unwrap_or(usize::MAX);
    if !asked {
        match pipe::capacity(fd) {
            Ok(got) if got >= want => {}
            _ => match pipe::set_capacity(fd, want) {
                Resized::Done(got) => debug!("fifo {name}: pipe size {got} bytes"),
                Resized::Capped { got, .. } | Resized::Refused { got, .. } => {
                    debug!("fifo {name}: pipe size {got} bytes (the kernel's limit)")
                }
            },
        }
        return;
    }
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
