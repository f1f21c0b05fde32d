//! Reloading the config on SIGHUP, without a restart and without losing a
//! byte of what keeps flowing.
//!
//! The new file is loaded and checked first; if it is invalid, or a FIFO it
//! adds cannot be made, nothing changes. Otherwise the new config's tables
//! are built as at start and filled from the running ones: a FIFO at the
//! same path keeps its node, its fds and what is in its pipe (its mode and
//! owner are corrected in place); a process whose settings and wiring did
//! not change keeps running with its pipes; the relay carries held bytes,
//! lines in progress and counters over (`Relay::inherit`). What went away is
//! drained: a removed input is read one last time, a removed output keeps
//! its path until its reader has what fifod held for it (or
//! `shutdown_timeout`), a removed or changed process gets SIGTERM.

use std::path::PathBuf;

use nix::unistd::Pid;

use super::*;
use crate::config::{self, Environment, ProcessConfig};
use crate::relay::RelayMap;

/// An output FIFO the new config dropped: what fifod held for it is written
/// as its reader makes room, and its path is removed once the pipe is empty
/// or `deadline` passed.
#[derive(Debug)]
pub(super) struct Retiring {
    fifo: ManagedFifo,
    fd: OwnedFd,
    bytes: Vec<u8>,
    written: usize,
    deadline: Instant,
    /// When to look again, and the interval (doubling).
    next: (Instant, Duration),
}

/// A process a reload stopped: SIGTERM was sent, SIGKILL follows at `kill_at`.
#[derive(Debug)]
pub(super) struct Stopped {
    name: String,
    pid: Pid,
    kill_at: Option<Instant>,
}

impl Stopped {
    pub(super) fn pid(&self) -> Pid {
        self.pid
    }
}

/// What an endpoint is across configs: a FIFO by its path (renaming it
/// keeps its node and its bytes), a process stream by the process's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Fifo(PathBuf),
    Stdout(String),
    Stderr(String),
    Log(String),
    Stdin(String),
    OwnStdin,
    OwnStdout,
    /// A detached node is never carried over a second time.
    Detached(PathBuf),
}

fn source_key(kind: SourceKind, config: &Config) -> Key {
    match kind {
        SourceKind::Fifo { fifo, .. } => Key::Fifo(config.fifos[fifo].path.clone()),
        SourceKind::Stdout(c) => Key::Stdout(config.processes[c].name.clone()),
        SourceKind::Stderr(c) => Key::Stderr(config.processes[c].name.clone()),
        SourceKind::Log(c) => Key::Log(config.processes[c].name.clone()),
        SourceKind::Stdin => Key::OwnStdin,
        SourceKind::Detached { fifo } => Key::Detached(config.fifos[fifo].path.clone()),
    }
}

fn sink_key(kind: SinkKind, config: &Config) -> Key {
    match kind {
        SinkKind::Fifo(fifo) => Key::Fifo(config.fifos[fifo].path.clone()),
        SinkKind::Stdin(c) => Key::Stdin(config.processes[c].name.clone()),
        SinkKind::Stdout => Key::OwnStdout,
    }
}

fn source_ref_key(r: &SourceRef, config: &Config) -> Key {
    match r {
        SourceRef::Fifo(name) => Key::Fifo(fifo_path(name, config)),
        SourceRef::Process(name) => Key::Stdout(name.clone()),
        SourceRef::Stderr(name) => Key::Stderr(name.clone()),
        SourceRef::Stdin => Key::OwnStdin,
    }
}

fn sink_ref_key(r: &SinkRef, config: &Config) -> Key {
    match r {
        SinkRef::Fifo(name) => Key::Fifo(fifo_path(name, config)),
        SinkRef::Process(name) => Key::Stdin(name.clone()),
        SinkRef::Stdout => Key::OwnStdout,
    }
}

fn fifo_path(name: &str, config: &Config) -> PathBuf {
    config
        .fifos
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.path.clone())
        .unwrap_or_default()
}

/// A route as sets of endpoint keys plus its framing: two configs have the
/// same route when these are equal (buffer and policy may change).
fn route_key(route: &config::RouteConfig, config: &Config) -> (Vec<Key>, Vec<Key>, bool) {
    let mut from: Vec<Key> = route
        .from
        .iter()
        .map(|r| source_ref_key(r, config))
        .collect();
    let mut to: Vec<Key> = route.to.iter().map(|r| sink_ref_key(r, config)).collect();
    let order = |k: &Key| format!("{k:?}");
    from.sort_by_key(order);
    to.sort_by_key(order);
    (from, to, route.framing == Framing::Lines)
}

fn wiring(ends: &ProcessEnds) -> (bool, bool, bool) {
    (
        ends.stdin.is_some(),
        ends.stdout.is_some(),
        ends.stderr.is_some(),
    )
}

impl Daemon {
    /// SIGHUP: load the config again and apply the difference.
    pub(super) fn reload(&mut self) {
        if self.state != State::Running {
            info!("received SIGHUP while stopping: not reloading");
            return;
        }
        info!("received SIGHUP: reloading {}", self.config_path.display());
        self.notifier.reloading();
        let outcome = match config::load(&self.config_path, &Environment::from_process()) {
            Ok(new) => self.apply(new),
            Err(e) => {
                for line in e.to_string().lines() {
                    error!("{line}");
                }
                Err("the new config is invalid".to_string())
            }
        };
        match outcome {
            Ok(()) => {
                info!("reload complete");
                let line = self.status_line();
                self.notifier.ready(&line);
            }
            Err(why) => {
                error!("reload failed: {why}; the running config stays in force");
                let line = format!("reload failed ({why}); {}", self.status_line());
                self.notifier.ready(&line);
            }
        }
    }

    /// Applies `new` in place of the running config. Fails, changing
    /// nothing, if it changes what cannot change while running or a FIFO it
    /// adds cannot be made.
    fn apply(&mut self, new: Config) -> Result<(), String> {
        let old_daemon = &self.config.daemon;
        for (key, changed) in [
            ("daemon.dir", old_daemon.dir != new.daemon.dir),
            (
                "daemon.dir_mode",
                old_daemon.dir_mode != new.daemon.dir_mode,
            ),
            ("daemon.control", old_daemon.control != new.daemon.control),
        ] {
            if changed {
                return Err(format!("{key} cannot change while fifod runs; restart it"));
            }
        }
        // An empty file is a valid config (every default), but a reload to
        // one is almost always a file caught while it was being written.
        let declares_nothing = new.fifos.is_empty() && new.processes.is_empty();
        if declares_nothing && !(self.config.fifos.is_empty() && self.config.processes.is_empty()) {
            return Err(
                "the new config declares no FIFO and no process (an empty or truncated file?); \
                 stop fifod to remove everything"
                    .to_string(),
            );
        }
        if old_daemon.log_level != new.daemon.log_level {
            warn!("daemon.log_level changes at the next start, not on reload");
        }
        ensure_fd_limit(&new).map_err(|e| e.to_string())?;
        // A FIFO whose path no longer names its node (someone removed or
        // replaced it) is made again, as if it were new; except one that
        // systemd passed, which is systemd's to make.
        let vanished: Vec<bool> = self
            .footprint
            .fifos
            .iter()
            .map(|f| !f.passed && !f.in_place())
            .collect();
        if new == self.config && !vanished.contains(&true) {
            info!("the config did not change");
            return Ok(());
        }
        let old_paths: Vec<PathBuf> = self.config.fifos.iter().map(|f| f.path.clone()).collect();
        let kept_at =
            |path: &PathBuf| (0..old_paths.len()).find(|&o| old_paths[o] == *path && !vanished[o]);
        let was_vanished =
            |path: &PathBuf| (0..old_paths.len()).any(|o| old_paths[o] == *path && vanished[o]);

        // FIFOs: kept by path; the new ones are made before anything else
        // changes, so that a failure leaves everything as it was.
        let mut fifos: Vec<Option<ManagedFifo>> = Vec::new();
        let mut made = Vec::new();
        for spec in &new.fifos {
            let retiring = self.retiring.iter().any(|r| r.fifo.path == spec.path);
            if kept_at(&spec.path).is_some() || retiring {
                fifos.push(None);
                continue;
            }
            match self.footprint.make_fifo(&new.daemon, spec) {
                Ok(fifo) => {
                    made.push(if was_vanished(&spec.path) {
                        format!(
                            "fifo {}: made again at {}: someone removed or replaced it",
                            fifo.name,
                            fifo.path.display()
                        )
                    } else {
                        format!("added fifo {}", fifo.name)
                    });
                    fifos.push(Some(fifo));
                }
                Err(e) => {
                    for fifo in fifos.iter().flatten().filter(|f| !f.adopted) {
                        Footprint::remove_fifo(fifo);
                    }
                    return Err(e.to_string());
                }
            }
        }
        let mut changes = made;

        // From here on nothing fails: faults are logged and the reload goes on.
        self.flush_drop_logs();
        let mut tables = Tables::new(&new);
        // The stream of a FIFO made again is a new one: it is not carried
        // over. Its sink is (what is held for it goes to the new FIFO).
        let old_sources: HashMap<Key, SourceId> = (0..self.sources.len())
            .filter(|&s| match self.sources[s].kind {
                SourceKind::Fifo { fifo, .. } => !vanished[fifo],
                _ => true,
            })
            .map(|s| (source_key(self.sources[s].kind, &self.config), s))
            .collect();
        let old_sinks: HashMap<Key, SinkId> = (0..self.sinks.len())
            .map(|k| (sink_key(self.sinks[k].kind, &self.config), k))
            .collect();

        // Processes: kept when neither their settings nor their wiring changed.
        let mut old_children: Vec<Option<Supervised>> = std::mem::take(&mut self.children)
            .into_iter()
            .map(Some)
            .collect();
        let mut children = Vec::new();
        let mut to_start = Vec::new();
        for (c, spec) in new.processes.iter().enumerate() {
            let same = self
                .config
                .processes
                .iter()
                .position(|old: &ProcessConfig| old.name == spec.name);
            match same {
                Some(o)
                    if self.config.processes[o] == *spec
                        && wiring(&self.ends[o]) == wiring(&tables.ends[c]) =>
                {
                    children.push(
                        old_children[o]
                            .take()
                            .unwrap_or_else(|| Supervised::new(spec.clone())),
                    );
                }
                Some(_) => {
                    changes.push(format!(
                        "restarting process {} (its settings changed)",
                        spec.name
                    ));
                    children.push(Supervised::new(spec.clone()));
                    to_start.push(c);
                }
                None => {
                    changes.push(format!("added process {}", spec.name));
                    children.push(Supervised::new(spec.clone()));
                    to_start.push(c);
                }
            }
        }
        let kept_process = |name: &str| {
            children
                .iter()
                .zip(0..)
                .any(|(child, c)| child.name() == name && !to_start.contains(&c))
        };

        // Before anything moves: no sink may be ahead of its source, and the
        // streams that are not carried over are read one last time.
        for s in 0..self.sources.len() {
            self.settle(s);
        }
        let carried_source = |s: SourceId, daemon: &Daemon| -> bool {
            let key = source_key(daemon.sources[s].kind, &daemon.config);
            match &key {
                Key::Stdout(name) | Key::Stderr(name) | Key::Log(name) => kept_process(name),
                _ => true,
            }
        };
        for s in 0..self.sources.len() {
            let key = source_key(self.sources[s].kind, &self.config);
            let stays = tables
                .sources
                .iter()
                .any(|n| source_key(n.kind, &new) == key);
            if !stays || !carried_source(s, self) {
                self.read_what_is_queued(s);
            }
        }

        // Nothing may stay registered under an old index.
        for s in 0..self.sources.len() {
            self.unwatch_source(s);
        }
        for k in 0..self.sinks.len() {
            self.set_sink_watched(k, false);
        }

        // Fill the new tables.
        let mut old_fifos: Vec<Option<ManagedFifo>> = std::mem::take(&mut self.footprint.fifos)
            .into_iter()
            .map(Some)
            .collect();
        // Old fds on FIFOs that stay but are not carried (their role or
        // their end handling changed): closed once the new ones are open.
        let mut spare: HashMap<PathBuf, Vec<OwnedFd>> = HashMap::new();
        // An output a reload removed and this one brings back, before it
        // was gone: what it still had to write goes first.
        let mut reclaimed: Vec<(usize, Vec<u8>)> = Vec::new();
        for (i, spec) in new.fifos.iter().enumerate() {
            if fifos[i].is_none() {
                fifos[i] = kept_at(&spec.path).and_then(|o| old_fifos[o].take());
                let retiring = self.retiring.iter().position(|r| r.fifo.path == spec.path);
                if fifos[i].is_none()
                    && let Some(r) = retiring
                {
                    let r = self.retiring.swap_remove(r);
                    changes.push(format!(
                        "fifo {}: kept, as it was still being removed",
                        spec.name
                    ));
                    reclaimed.push((i, r.bytes[r.written..].to_vec()));
                    spare.entry(spec.path.clone()).or_default().push(r.fd);
                    fifos[i] = Some(r.fifo);
                }
                if let Some(fifo) = &fifos[i] {
                    match fifo.set_attributes(spec) {
                        Ok(done) if !done.is_empty() => {
                            changes.push(format!("fifo {}: {}", spec.name, done.join(", ")));
                        }
                        Ok(_) => {}
                        Err(e) => warn!("{e}"),
                    }
                }
            }
        }
        let mut fifos: Vec<ManagedFifo> = fifos.into_iter().flatten().collect();
        let mut source_map: Vec<Option<SourceId>> = vec![None; self.sources.len()];
        for n in 0..tables.sources.len() {
            let kind = tables.sources[n].kind;
            let key = source_key(kind, &new);
            let old = old_sources
                .get(&key)
                .copied()
                .filter(|&s| carried_source(s, self));
            let same_handling = |s: SourceId| match (self.sources[s].kind, kind) {
                (SourceKind::Fifo { sessions: a, .. }, SourceKind::Fifo { sessions: b, .. }) => {
                    a == b
                }
                _ => true,
            };
            match old {
                Some(s) if same_handling(s) => {
                    let source = &mut self.sources[s];
                    let into = &mut tables.sources[n];
                    into.fd = source.fd.take();
                    into.bytes = source.bytes;
                    into.partial = std::mem::take(&mut source.partial);
                    source_map[s] = Some(n);
                }
                _ => {}
            }
        }
        let mut sink_map: Vec<Option<SinkId>> = vec![None; self.sinks.len()];
        for n in 0..tables.sinks.len() {
            let key = sink_key(tables.sinks[n].kind, &new);
            let Some(&k) = old_sinks.get(&key) else {
                continue;
            };
            sink_map[k] = Some(n);
            let process_kept = match &key {
                Key::Stdin(name) => kept_process(name),
                _ => true,
            };
            let same_pipe = match self.sinks[k].kind {
                SinkKind::Fifo(fifo) => !vanished[fifo],
                _ => true,
            };
            let sink = &mut self.sinks[k];
            let into = &mut tables.sinks[n];
            into.intake = sink.intake;
            if process_kept && same_pipe {
                into.fd = sink.fd.take();
            }
            if same_pipe {
                into.keep_alive = sink.keep_alive.take();
                into.end_check = sink.end_check;
            }
        }
        // The node of an input someone removed is read until its writers
        // leave, as one more source of the routes of the FIFO made again.
        // Bytes written into the node of an output someone removed, and not
        // read, are taken back to go to the FIFO made again.
        let mut given_back: Vec<(SinkId, Vec<u8>)> = reclaimed
            .into_iter()
            .filter(|(_, bytes)| !bytes.is_empty())
            .filter_map(|(i, bytes)| {
                let n = tables
                    .sinks
                    .iter()
                    .position(|k| k.kind == SinkKind::Fifo(i));
                if n.is_none() {
                    warn!(
                        "fifo {}: no longer an output: {} bytes it still had to write are dropped",
                        new.fifos[i].name,
                        bytes.len()
                    );
                }
                Some((n?, bytes))
            })
            .collect();
        for (s, old) in self.sources.iter().enumerate() {
            let SourceKind::Fifo { fifo: o, .. } = old.kind else {
                continue;
            };
            let Some(fd) = old.fd.as_ref().filter(|_| vanished[o]) else {
                continue;
            };
            let path = &self.config.fifos[o].path;
            let made_again = tables
                .sources
                .iter()
                .enumerate()
                .find_map(|(n, new_source)| match new_source.kind {
                    SourceKind::Fifo { fifo, .. } if new.fifos[fifo].path == *path => {
                        Some((n, fifo))
                    }
                    _ => None,
                });
            let Some((n, i)) = made_again else {
                continue;
            };
            match reopen_read_only(fd.as_fd()) {
                Ok(detached) => {
                    let id = tables.sources.len();
                    let mut source = Source::new(
                        SourceKind::Detached { fifo: i },
                        format!("{} (removed node)", new.fifos[i].name),
                    );
                    source.fd = Some(detached);
                    tables.sources.push(source);
                    for route in &mut tables.routes {
                        if route.sources.contains(&n) {
                            route.sources.push(id);
                        }
                    }
                    source_map[s] = Some(id);
                }
                Err(e) => warn!(
                    "fifo {}: cannot go on reading its removed node: {e}",
                    old.name
                ),
            }
        }
        for (sink, &n) in self.sinks.iter().zip(&sink_map) {
            let (SinkKind::Fifo(o), Some(n)) = (sink.kind, n) else {
                continue;
            };
            if !vanished[o] {
                continue;
            }
            if let Some(fd) = sink.fd.as_ref().or(sink.keep_alive.as_ref()) {
                let bytes = read_back(fd.as_fd());
                if !bytes.is_empty() {
                    given_back.push((n, bytes));
                }
            }
        }
        // Whatever fds the old tables still have on FIFOs are spare.
        for source in &mut self.sources {
            if let (SourceKind::Fifo { fifo, .. }, Some(fd)) = (source.kind, source.fd.take()) {
                let path = self.config.fifos[fifo].path.clone();
                spare.entry(path).or_default().push(fd);
            }
        }
        for sink in &mut self.sinks {
            if let SinkKind::Fifo(fifo) = sink.kind {
                let path = &self.config.fifos[fifo].path;
                let fds = spare.entry(path.clone()).or_default();
                fds.extend(sink.fd.take());
                fds.extend(sink.keep_alive.take());
            }
        }
        for source in &mut tables.sources {
            if let (SourceKind::Fifo { fifo, sessions }, None) = (source.kind, &source.fd) {
                let previous = spare.remove(&new.fifos[fifo].path).unwrap_or_default();
                source.fd = input_fd(&mut fifos[fifo], sessions, previous)
                    .map_err(|e| error!("fifo {}: {e}; not reading it", source.name))
                    .ok();
            }
        }
        // An output between sessions keeps only its spare reader until the
        // next writer: it is not opened for writing here.
        for sink in &mut tables.sinks {
            if let (SinkKind::Fifo(fifo), None, None) = (sink.kind, &sink.fd, &sink.keep_alive) {
                sink.fd = output_fd(&mut fifos[fifo])
                    .map_err(|e| error!("fifo {}: {e}; not writing it", sink.name))
                    .ok();
            }
        }
        for (fifo, spec) in fifos.iter_mut().zip(&new.fifos) {
            if spec.role == Role::Unrouted
                && let Err(e) = fifo.hold()
            {
                warn!("{e}");
            }
        }
        for source in &mut tables.sources {
            if source.kind == SourceKind::Stdin && source.fd.is_none() {
                source.fd = take_std_stream(libc::STDIN_FILENO);
            }
        }
        for sink in &mut tables.sinks {
            if sink.kind == SinkKind::Stdout && sink.fd.is_none() {
                sink.fd = take_std_stream(libc::STDOUT_FILENO);
                if sink.fd.is_none() {
                    sink.intake = Intake::Refusing;
                }
            }
        }

        // The relay: routes by their endpoints and framing.
        let new_routes: Vec<_> = new.routes.iter().map(|r| route_key(r, &new)).collect();
        let mut route_map: Vec<Option<usize>> = Vec::new();
        for route in &self.config.routes {
            let key = route_key(route, &self.config);
            let found = new_routes.iter().position(|k| *k == key);
            if found.is_some_and(|r| route_map.contains(&Some(r))) {
                route_map.push(None);
            } else {
                route_map.push(found);
            }
        }
        let kept_routes = route_map.iter().flatten().count();
        if kept_routes != self.config.routes.len() || kept_routes != new.routes.len() {
            changes.push(format!(
                "routes: {kept_routes} kept, {} removed or changed, {} new",
                self.config.routes.len() - kept_routes,
                new.routes.len() - kept_routes
            ));
        }
        let mut relay = Relay::new(&tables.routes, tables.sources.len(), tables.sinks.len());
        let old_relay = std::mem::replace(&mut self.relay, Relay::new(&[], 0, 0));
        let leftovers = relay.inherit(
            old_relay,
            &RelayMap {
                routes: &route_map,
                sources: &source_map,
                sinks: &sink_map,
            },
        );
        for (n, bytes) in given_back {
            info!(
                "{}: {} bytes written but not read yet are held for it again, first in line",
                tables.sinks[n].name,
                bytes.len()
            );
            relay.give_back(n, &bytes);
        }

        // What went away.
        let deadline = Instant::now() + new.daemon.shutdown_timeout;
        let mut left_for: HashMap<Key, (String, Vec<u8>)> = HashMap::new();
        for (k, bytes) in leftovers {
            let sink = &self.sinks[k];
            left_for
                .entry(sink_key(sink.kind, &self.config))
                .or_insert_with(|| (sink.name.clone(), Vec::new()))
                .1
                .extend(bytes);
        }
        for (o, fifo) in old_fifos.iter_mut().enumerate() {
            let Some(fifo) = fifo.take() else {
                continue;
            };
            let key = Key::Fifo(self.config.fifos[o].path.clone());
            if vanished[o] {
                // Its path is someone else's now, or the new FIFO's: the
                // old node is left to whoever moved it, if anyone.
                spare.remove(&self.config.fifos[o].path);
                continue;
            }
            changes.push(format!("removed fifo {}", fifo.name));
            let bytes = left_for.remove(&key).map(|(_, b)| b).unwrap_or_default();
            let is_output = self.config.fifos[o].role == Role::Output;
            // Opened before the old fds close, so the pipe keeps its bytes.
            let fd = is_output
                .then(|| fifo.reopen(Access::ReadWrite).ok())
                .flatten();
            spare.remove(&self.config.fifos[o].path);
            match fd {
                Some(fd)
                    if is_output && (!bytes.is_empty() || pipe::queued_bytes(fd.as_fd()) > 0) =>
                {
                    info!(
                        "fifo {}: removed from the config; its path stays until its reader \
                         has what fifod holds for it ({} bytes), or for {}",
                        fifo.name,
                        bytes.len(),
                        format_duration(new.daemon.shutdown_timeout)
                    );
                    self.retiring.push(Retiring {
                        fifo,
                        fd,
                        bytes,
                        written: 0,
                        deadline,
                        next: (Instant::now(), END_POLL_FIRST),
                    });
                }
                _ => Footprint::remove_fifo(&fifo),
            }
        }
        for (name, bytes) in left_for.into_values() {
            if !bytes.is_empty() {
                warn!(
                    "{name}: no longer fed by any route: {} bytes held for it are dropped",
                    bytes.len()
                );
            }
        }
        let now = Instant::now();
        for child in old_children.into_iter().flatten() {
            if !new.processes.iter().any(|p| p.name == child.name()) {
                changes.push(format!("removed process {}", child.name()));
            }
            if let Some(pid) = child.pid {
                info!(
                    "sending SIGTERM to process {} (pid {pid}): the reload replaces it",
                    child.name()
                );
                child::signal_group(pid, Signal::SIGTERM);
                self.stopped.push(Stopped {
                    name: child.name().to_string(),
                    pid,
                    kill_at: Some(now + KILL_GRACE),
                });
            }
        }
        // Old pipes of stopped processes and spare FIFO fds close here.
        drop(spare);

        // Swap in the new tables and start what is new.
        self.footprint.fifos = fifos;
        // Drops carried over were logged already (just above, at the latest).
        self.drop_logs = relay
            .lanes()
            .iter()
            .map(|lane| DropLog {
                reported: lane.stats().dropped,
                ..DropLog::default()
            })
            .collect();
        self.relay = relay;
        self.sources = tables.sources;
        self.sinks = tables.sinks;
        self.ends = tables.ends;
        self.children = children;
        self.config = new;
        self.resize_pipes();
        for change in &changes {
            info!("reload: {change}");
        }
        for s in 0..self.sources.len() {
            self.watch_source(s);
        }
        for k in 0..self.sinks.len() {
            self.flush(k);
        }
        for c in to_start {
            self.start_child(c);
        }
        self.watch_dirs();
        Ok(())
    }

    /// Watches the directories of every managed FIFO.
    pub(super) fn watch_dirs(&self) {
        let Some(watch) = &self.dir_watch else {
            return;
        };
        for fifo in &self.footprint.fifos {
            if let Some(dir) = fifo.path.parent()
                && let Err(e) = watch.watch(dir)
            {
                warn!("cannot watch {}: {e}", dir.display());
            }
        }
    }

    /// Something changed in a FIFO's directory: a FIFO whose path no longer
    /// names it (removed, renamed, replaced) is made again at once, as a
    /// reload would; writers still connected to the old one are read to
    /// their end like those of a removed FIFO.
    pub(super) fn on_dirs_changed(&mut self) {
        let Some(watch) = &self.dir_watch else {
            return;
        };
        if !watch.drain() || self.state != State::Running {
            return;
        }
        let gone: Vec<&ManagedFifo> = self
            .footprint
            .fifos
            .iter()
            .filter(|f| !f.passed && !f.in_place())
            .collect();
        if gone.is_empty() {
            return;
        }
        for fifo in &gone {
            warn!(
                "fifo {}: {} was removed or replaced by someone else; making it again",
                fifo.name,
                fifo.path.display()
            );
        }
        if let Err(why) = self.apply(self.config.clone()) {
            error!("{why}; the FIFO is made again as soon as its path is free");
        }
    }

    /// Reads from `s` what its sinks already have through `tee`, so that
    /// no lane is ahead of it.
    fn settle(&mut self, s: SourceId) {
        let mut need = self.relay.ahead_of(s);
        while need > 0 {
            let taken = self.take_from(s, need.min(READ_CHUNK));
            if taken == 0 {
                break;
            }
            need = self.relay.ahead_of(s);
        }
    }

    /// Reads what is in `s`'s pipe now into the relay, whatever the lanes'
    /// room (a pipe's worth at most): its stream will not be read again.
    fn read_what_is_queued(&mut self, s: SourceId) {
        let Some(fd) = &self.sources[s].fd else {
            return;
        };
        let mut left = pipe::queued_bytes(fd.as_fd());
        while left > 0 {
            let taken = self.take_from(s, left.min(READ_CHUNK));
            if taken == 0 {
                break;
            }
            left -= taken;
        }
        if matches!(self.sources[s].kind, SourceKind::Log(_)) {
            self.flush_log_line(s);
        }
    }

    fn flush_drop_logs(&mut self) {
        let now = Instant::now();
        for l in 0..self.drop_logs.len() {
            if self.relay.lanes()[l].stats().dropped > self.drop_logs[l].reported {
                self.log_drops(l, now);
            }
        }
    }

    /// Writes on for the FIFOs a reload removed, and removes those whose
    /// reader has everything, or whose time is up.
    pub(super) fn tend_retiring(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.retiring.len() {
            let r = &mut self.retiring[i];
            if r.next.0 > now {
                i += 1;
                continue;
            }
            if r.written < r.bytes.len() {
                r.written += write_some(r.fd.as_fd(), &r.bytes[r.written..]);
            }
            let unwritten = r.bytes.len() - r.written;
            let unread = pipe::queued_bytes(r.fd.as_fd());
            if unwritten == 0 && unread == 0 {
                let r = self.retiring.swap_remove(i);
                info!("fifo {}: its reader has everything", r.fifo.name);
                Footprint::remove_fifo(&r.fifo);
            } else if now >= r.deadline {
                let r = self.retiring.swap_remove(i);
                warn!(
                    "fifo {}: removed with {} bytes undelivered ({unwritten} held by fifod, \
                     {unread} unread in the pipe)",
                    r.fifo.name,
                    unwritten + unread
                );
                Footprint::remove_fifo(&r.fifo);
            } else {
                let wait = (r.next.1 * 2).min(END_POLL_MAX);
                r.next = (now + r.next.1, wait);
                i += 1;
            }
        }
    }

    /// When the retiring FIFOs and stopped processes next need a look.
    pub(super) fn retired_deadline(&self) -> Option<Instant> {
        let fifos = self.retiring.iter().map(|r| r.next.0);
        let kills = self.stopped.iter().filter_map(|s| s.kill_at);
        fifos.chain(kills).min()
    }

    /// A reaped pid that belonged to a process a reload stopped.
    pub(super) fn reaped_stopped(&mut self, pid: Pid, how: Exit) -> bool {
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

    /// SIGKILL to the groups of stopped processes that outlived their grace.
    pub(super) fn kill_stopped(&mut self, now: Instant, all: bool) {
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

    /// At the very end: the retiring FIFOs go, whatever they hold.
    pub(super) fn remove_retiring(&mut self) {
        for r in self.retiring.drain(..) {
            let left = r.bytes.len() - r.written + pipe::queued_bytes(r.fd.as_fd());
            if left > 0 {
                warn!("fifo {}: {left} bytes undelivered", r.fifo.name);
            }
            Footprint::remove_fifo(&r.fifo);
        }
    }
}

/// A read-only fd on the same pipe as `fd`, through `/proc/self/fd`: the
/// node may have no path any more.
fn reopen_read_only(fd: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    nix::fcntl::open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
}

/// Reads what is queued in a pipe fifod holds (a pipe's worth at most).
fn read_back(fd: BorrowedFd<'_>) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut buf = vec![0; pipe::queued_bytes(fd)];
    while !buf.is_empty() {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                bytes.extend_from_slice(&buf[..n]);
                let left = pipe::queued_bytes(fd);
                buf.truncate(left);
            }
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    bytes
}
