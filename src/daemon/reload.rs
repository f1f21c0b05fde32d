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

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use log::{error, info, warn};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::diff::{self, Diff, FifoPlan};
use super::loader::{Loaded, Start};
use super::{
    Daemon, READ_CHUNK, SETTLE_TRIES, Sink, SinkKind, Source, SourceKind, State, Tables,
    ensure_fd_limit, input_fd, read_write_fd,
};
use crate::child::Supervised;
use crate::config::{Config, ProcessConfig, Role};
use crate::fifo::{Access, Footprint, ManagedFifo, NodeId, one_node, reopen_node};
use crate::pipe;
use crate::relay::RelayMap;
use crate::relay::{LaneId, Relay, SinkId, SourceId};
use crate::units::format_duration;
use crate::watch::DirWatch;

/// For each FIFO of a new config: the FIFO made for it and what the log
/// says of it, or nothing if a running or retiring one is taken over.
type Made = Option<(ManagedFifo, String)>;

/// A reload in progress: the new config's tables, being filled from the
/// running ones, and what the reload found to do.
#[derive(Debug)]
struct Next {
    config: Config,
    tables: Tables,
    /// Indexed like the running config's FIFOs: its path no longer names it.
    vanished: Vec<bool>,
    /// What the new config keeps, starts and stops.
    diff: Diff,
    /// For each running FIFO: the new config's FIFO at its path, if any.
    successors: Vec<Option<usize>>,
    /// For each running process: whether it keeps running.
    kept_processes: Vec<bool>,
    /// The footprint's FIFOs for `config`, in its order: the new ones from
    /// the start, the kept ones as `take_kept_fifos` finds them; handed
    /// over (and emptied) by `open_new_fds`.
    fifos: Vec<Option<ManagedFifo>>,
    children: Vec<Supervised>,
    /// Processes to start (new, or whose settings changed).
    to_start: Vec<usize>,
    /// Running processes that are not kept (`plan_processes`), until
    /// `stop_replaced` stops them.
    replaced: Vec<Supervised>,
    /// For the log, once applied.
    changes: Vec<String>,
    /// Old fds on FIFOs, by path, that no new endpoint took over (removed,
    /// made again, retiring ones brought back, or with another role or end
    /// handling): closed only once the new fds on the same pipe are open.
    spare: HashMap<PathBuf, Vec<OwnedFd>>,
    /// Retiring outputs brought back (`take_kept_fifos`), and what they
    /// still had to write; turned into `given_back` by `carry_sinks`.
    reclaimed: Vec<(usize, Vec<u8>)>,
    /// For each old source and sink (by slot), the same one in `tables`
    /// (by its place there until `place`, by slot after).
    source_map: Vec<Option<SourceId>>,
    sink_map: Vec<Option<SinkId>>,
    /// Endpoints of `tables` that are the old ones, fd and epoll
    /// registration included, and keep their slot: (place in `tables`,
    /// slot).
    kept_sources: Vec<(usize, SourceId)>,
    kept_sinks: Vec<(usize, SinkId)>,
    /// Bytes to hold again, first in line, for sinks of `tables`; given to
    /// the new relay by `carry_relay`.
    given_back: Vec<(SinkId, Vec<u8>)>,
}

impl Next {
    fn new(
        config: Config,
        vanished: Vec<bool>,
        diff: Diff,
        made: Vec<Made>,
        (sources, sinks, old_processes): (usize, usize, usize),
    ) -> Next {
        let tables = Tables::new(&config);
        let successors = diff.successors(vanished.len());
        let (fifos, changes): (Vec<_>, Vec<_>) = made
            .into_iter()
            .map(|m| m.map_or((None, None), |(fifo, change)| (Some(fifo), Some(change))))
            .unzip();
        Next {
            config,
            tables,
            kept_processes: diff.kept_processes(old_processes),
            successors,
            vanished,
            diff,
            fifos,
            children: Vec::new(),
            to_start: Vec::new(),
            replaced: Vec::new(),
            changes: changes.into_iter().flatten().collect(),
            spare: HashMap::default(),
            reclaimed: Vec::new(),
            source_map: vec![None; sources],
            sink_map: vec![None; sinks],
            kept_sources: Vec::new(),
            kept_sinks: Vec::new(),
            given_back: Vec::new(),
        }
    }
}

impl Daemon {
    /// SIGHUP: load the config again and apply the difference.
    pub(super) fn reload(&mut self) {
        if self.state != State::Running {
            info!("received SIGHUP while stopping: not reloading");
            return;
        }
        info!("received SIGHUP: reloading {}", self.config_path.display());
        match self.loader.start(&self.config_path) {
            Start::Started => {
                self.last_reload.loading();
                self.notifier.reloading();
            }
            Start::Queued => info!("a reload is under way: the file is read again after it"),
            Start::Done(loaded) => {
                self.last_reload.loading();
                self.notifier.reloading();
                self.finish_reload(*loaded);
            }
        }
    }

    /// The config loaded for a reload is ready: apply it, and load the
    /// file again if a SIGHUP came meanwhile.
    pub(super) fn on_config_loaded(&mut self) {
        let Some((loaded, again)) = self.loader.finished() else {
            return;
        };
        if self.state != State::Running {
            info!("stopping: the reloaded config is not applied");
            return;
        }
        self.finish_reload(loaded);
        if again {
            self.reload();
        }
    }

    /// Applies a loaded config, or says why not, everywhere it shows.
    fn finish_reload(&mut self, loaded: Loaded) {
        // What `STATUS=` and `fifod status` say of a failure: the config's
        // first error, else why it could not be applied.
        let mut first_error = None;
        // Whether a FIFO may have been removed or replaced: the directory
        // watch says (one read), else every node is looked at.
        let look = self.dir_watch.as_ref().is_none_or(DirWatch::drain);
        let outcome = match loaded {
            Ok(new) => self.apply(new, look),
            Err(e) => {
                let errors = e.to_string();
                for line in errors.lines() {
                    error!("{line}");
                }
                first_error = Some(errors);
                Err(e.kind().to_string())
            }
        };
        match outcome {
            Ok(changes) => {
                info!("reload complete");
                self.last_reload.succeeded(changes);
            }
            Err(why) => {
                error!("reload failed: {why}; the running config stays in force");
                self.last_reload
                    .failed(first_error.as_deref().unwrap_or(&why));
            }
        }
        self.store_fifos();
        let line = self.status_line();
        self.notifier.ready(&line);
        give_memory_back();
    }

    /// Applies `new` in place of the running config. Fails, changing
    /// nothing, if it changes what cannot change while running or a FIFO it
    /// adds cannot be made.
    ///
    /// Endpoints that stay keep their slot, their fd and their epoll
    /// registration; only those that come or go are touched, so an event
    /// already read for one of them is still for the same endpoint (and
    /// one for an endpoint that went is dropped by its generation).
    /// With `look`, every FIFO's path is checked to still name its node;
    /// without, the directory watch said nothing changed.
    /// Returns what changed, as the log says it.
    pub(super) fn apply(&mut self, new: Config, look: bool) -> Result<Vec<String>, String> {
        let Some(vanished) = self.check_new(&new, look)? else {
            info!("the config did not change");
            return Ok(Vec::new());
        };
        let retiring: HashSet<&Path> = self.retiring.paths().collect();
        let diff = diff::diff(&self.config, &new, &vanished, &retiring);
        // The only steps that can fail, first: nothing has changed yet.
        // Nothing is made in `dir` unless fifod still holds its lock there.
        self.footprint
            .relock(&new.daemon)
            .map_err(|e| e.to_string())?;
        let fifos = self.make_new_fifos(&new, &diff.fifos)?;
        // From here on nothing fails: faults are logged and the reload goes on.
        self.flush_drop_logs();
        let counts = (
            self.sources.slot_count(),
            self.sinks.slot_count(),
            self.config.processes.len(),
        );
        let mut next = Next::new(new, vanished, diff, fifos, counts);
        self.plan_processes(&mut next);
        // Before anything moves: line logs give what they hold to the relay,
        // which carries it over (a log comes back once its source's routes
        // allow it again), no sink may be ahead of its source, and the
        // streams that are not carried over are read one last time.
        self.hand_over_line_logs();
        for s in self.sources.ids() {
            self.settle(s);
        }
        // Lanes that are not carried whole, and those that take their
        // bytes or bytes given back, hold them in memory from here on.
        let unpipe = self.lanes_to_unpipe(&next);
        self.unpipe_lanes(&unpipe);
        let staying = self.staying_sources(&next);
        for s in self.sources.ids() {
            if !staying.contains(&s) {
                self.read_what_is_queued(s);
            }
        }
        let mut old_fifos: Vec<Option<ManagedFifo>> = std::mem::take(&mut self.footprint.fifos)
            .into_iter()
            .map(Some)
            .collect();
        // In this order: the sink map (carry_sinks) tells detach_vanished
        // where bytes go back; both feed carry_relay. Every old fd on a FIFO
        // that is not carried waits in `spare` until the new fds on the same
        // pipe are open (open_new_fds) and removed outputs are reopened to
        // retire (retire_removed): a pipe is never left without an fd.
        self.take_kept_fifos(&mut next, &mut old_fifos);
        self.carry_sources(&mut next);
        self.carry_sinks(&mut next);
        self.detach_vanished(&mut next);
        self.unwatch_leaving(&next);
        let fifos = self.open_new_fds(&mut next);
        let removed_sinks = self.place(&mut next);
        self.ending = self
            .sinks
            .iter()
            .filter(|(_, sink)| sink.end_check.is_some())
            .map(|(k, _)| k)
            .collect();
        let (relay, leftovers) = self.carry_relay(&mut next);
        self.retire_removed(&mut next, old_fifos, leftovers, removed_sinks);
        self.stop_replaced(&mut next);
        // Spare FIFO fds close here, once the new ones are open.
        next.spare.clear();

        // Swap in the rest and start what is new.
        self.footprint.fifos = fifos;
        // Lanes that stay keep their drop messages' pace; the drops of the
        // others were logged just above.
        let kept_lanes: HashSet<LaneId> = next
            .diff
            .routes
            .iter()
            .flatten()
            .flat_map(|&r| relay.lanes_of_route(r).iter().copied())
            .collect();
        self.drop_logs.follow(&relay, |l| kept_lanes.contains(&l));
        self.lane_pipes.keep_for(&relay);
        self.relay = relay;
        self.ends = next.tables.ends;
        self.children = next.children;
        let resize_all = next.config.daemon.pipe_size != self.config.daemon.pipe_size;
        self.config = next.config;
        // Kept FIFOs have their size already, unless `pipe_size` changed.
        let new_fifos: HashSet<usize> = (0..next.diff.fifos.len())
            .filter(|&i| !matches!(next.diff.fifos[i], FifoPlan::Keep(_)))
            .collect();
        self.resize_pipes((!resize_all).then_some(&new_fifos));
        for change in &next.changes {
            info!("reload: {change}");
        }
        for s in self.sources.ids() {
            self.watch_source(s);
        }
        for k in self.sinks.ids() {
            self.flush(k);
        }
        for c in next.to_start {
            self.start_child(c);
        }
        self.watch_dirs(Some(&|i| new_fifos.contains(&i)));
        Ok(next.changes)
    }

    /// The lanes whose bytes must be in memory before the relay is carried
    /// over: those of routes that are not carried whole, and every lane of
    /// a sink that takes bytes from them, or that gets back bytes from a
    /// FIFO someone removed. Every other lane keeps its pipe.
    fn lanes_to_unpipe(&self, next: &Next) -> Vec<LaneId> {
        let mut sinks: HashSet<SinkId> = HashSet::default();
        for (r, carried) in next.diff.routes.iter().enumerate() {
            if carried.is_none() {
                for &l in self.relay.lanes_of_route(r) {
                    sinks.insert(self.relay.lanes()[l].sink);
                }
            }
        }
        for (k, sink) in self.sinks.iter() {
            if matches!(sink.kind, SinkKind::Fifo(o) if next.vanished[o]) {
                sinks.insert(k);
            }
        }
        sinks
            .into_iter()
            .flat_map(|k| self.relay.lanes_of_sink(k).iter().copied())
            .collect()
    }

    /// Old endpoints that do not keep their slot stop being watched: their
    /// fds go (or move to a new endpoint's slot, under a new generation).
    fn unwatch_leaving(&mut self, next: &Next) {
        let mut kept = vec![false; self.sources.slot_count()];
        for &(_, s) in &next.kept_sources {
            kept[s] = true;
        }
        for s in self.sources.ids() {
            if !kept[s] {
                self.unwatch_source(s);
            }
        }
        let mut kept = vec![false; self.sinks.slot_count()];
        for &(_, k) in &next.kept_sinks {
            kept[k] = true;
        }
        for k in self.sinks.ids() {
            if !kept[k] {
                self.set_sink_watched(k, false);
            }
        }
    }

    /// Puts `next`'s endpoints into the tables: those carried over in
    /// their own slots, new ones in free slots; every old one that is not
    /// carried leaves its slot. From here on `next` speaks of slots.
    /// Returns the sinks that left, by their old slot.
    fn place(&mut self, next: &mut Next) -> Vec<(SinkId, Sink)> {
        let mut keep = vec![None; next.tables.sources.len()];
        for &(n, s) in &next.kept_sources {
            keep[n] = Some(s);
        }
        let sources = std::mem::take(&mut next.tables.sources);
        let at_source = self.sources.replace_all(sources, &keep).at;
        let mut keep = vec![None; next.tables.sinks.len()];
        for &(n, k) in &next.kept_sinks {
            keep[n] = Some(k);
        }
        let sinks = std::mem::take(&mut next.tables.sinks);
        let placed = self.sinks.replace_all(sinks, &keep);
        let at_sink = placed.at;
        for route in &mut next.tables.routes {
            for s in &mut route.sources {
                *s = at_source[*s];
            }
            for k in &mut route.sinks {
                *k = at_sink[*k];
            }
        }
        for ends in &mut next.tables.ends {
            ends.stdin = ends.stdin.map(|n| at_sink[n]);
            ends.stdout = ends.stdout.map(|n| at_source[n]);
            ends.stderr = ends.stderr.map(|n| at_source[n]);
        }
        for n in next.source_map.iter_mut().flatten() {
            *n = at_source[*n];
        }
        for n in next.sink_map.iter_mut().flatten() {
            *n = at_sink[*n];
        }
        for (n, _) in &mut next.given_back {
            *n = at_sink[*n];
        }
        placed.removed
    }

    /// What `new` must not change, and whether anything changed: `None` if
    /// nothing did, else which running FIFOs are no longer at their path.
    fn check_new(&self, new: &Config, look: bool) -> Result<Option<Vec<bool>>, String> {
        let old = &self.config.daemon;
        for (key, changed) in [
            ("daemon.dir", old.dir != new.daemon.dir),
            ("daemon.dir_mode", old.dir_mode != new.daemon.dir_mode),
            ("daemon.control", old.control != new.daemon.control),
            (
                "daemon.control_group",
                old.control_group != new.daemon.control_group,
            ),
        ] {
            if changed {
                return Err(format!("{key} cannot change while fifod runs; restart it"));
            }
        }
        // An empty file is a valid config (every default), but a reload to
        // one is almost always a file caught while it was being written.
        let declares_nothing = |c: &Config| c.fifos.is_empty() && c.processes.is_empty();
        if declares_nothing(new) && !declares_nothing(&self.config) {
            return Err(
                "the new config declares no FIFO and no process (an empty or truncated file?); \
                 stop fifod to remove everything"
                    .to_string(),
            );
        }
        if old.log_level != new.daemon.log_level {
            warn!("daemon.log_level changes at the next start, not on reload");
        }
        ensure_fd_limit(new).map_err(|e| e.to_string())?;
        // A FIFO whose path no longer names its node (someone removed or
        // replaced it) is made again, as if it were new; except one that
        // systemd passed, which is systemd's to make.
        let vanished: Vec<bool> = self
            .footprint
            .fifos
            .iter()
            .map(|f| look && !f.passed && !f.in_place())
            .collect();
        if *new == self.config && !vanished.contains(&true) {
            return Ok(None);
        }
        Ok(Some(vanished))
    }

    /// Makes the FIFOs `new` adds (and those that vanished), in its order;
    /// `None` where a running or retiring FIFO is taken over. On a failure,
    /// removes what it made.
    fn make_new_fifos(&mut self, new: &Config, plans: &[FifoPlan]) -> Result<Vec<Made>, String> {
        let mut fifos = Vec::new();
        for (spec, &plan) in new.fifos.iter().zip(plans) {
            let FifoPlan::Make { replaces } = plan else {
                fifos.push(None);
                continue;
            };
            match self.footprint.make_fifo(&new.daemon, spec) {
                Ok(fifo) => {
                    let change = if replaces.is_some() {
                        format!(
                            "fifo {}: made again at {}: someone removed or replaced it",
                            fifo.name,
                            fifo.path.display()
                        )
                    } else {
                        format!("added fifo {}", fifo.name)
                    };
                    fifos.push(Some((fifo, change)));
                }
                Err(e) => {
                    undo_made(&fifos);
                    return Err(e.to_string());
                }
            }
        }
        // Two FIFOs that are one node (paths that meet through a symbolic
        // link above `dir`) would feed each other.
        let mut nodes: HashMap<NodeId, &ManagedFifo> = HashMap::default();
        for &plan in plans {
            if let FifoPlan::Keep(o) = plan {
                let kept = &self.footprint.fifos[o];
                nodes.insert(kept.node_id(), kept);
            }
        }
        let mut clash = None;
        for (fifo, _) in fifos.iter().flatten() {
            if let Some(other) = nodes.insert(fifo.node_id(), fifo) {
                clash = Some(one_node(fifo, other).to_string());
                break;
            }
        }
        if let Some(why) = clash {
            undo_made(&fifos);
            return Err(why);
        }
        Ok(fifos)
    }

    /// Processes are kept when neither their settings nor their wiring
    /// changed; the others start anew.
    fn plan_processes(&mut self, next: &mut Next) {
        let mut old: Vec<Option<Supervised>> = std::mem::take(&mut self.children)
            .into_iter()
            .map(Some)
            .collect();
        let known: HashSet<&str> = self
            .config
            .processes
            .iter()
            .map(|old: &ProcessConfig| old.name.as_str())
            .collect();
        for (c, spec) in next.config.processes.iter().enumerate() {
            if let Some(o) = next.diff.processes[c] {
                let child = old[o].take();
                next.children
                    .push(child.unwrap_or_else(|| Supervised::new(spec.clone())));
                continue;
            }
            next.changes.push(if known.contains(spec.name.as_str()) {
                format!("restarting process {} (its settings changed)", spec.name)
            } else {
                format!("added process {}", spec.name)
            });
            next.children.push(Supervised::new(spec.clone()));
            next.to_start.push(c);
        }
        next.replaced = old.into_iter().flatten().collect();
    }

    /// Whether old source `s` would be the same stream as the source of
    /// the same name in `next`, if `next` has one: not if its process
    /// starts anew or its FIFO was made again.
    fn same_stream(&self, s: SourceId, next: &Next) -> bool {
        match self.sources[s].kind {
            SourceKind::Fifo { fifo, .. } => !next.vanished[fifo],
            SourceKind::Stdout(c) | SourceKind::Stderr(c) | SourceKind::Log(c) => {
                next.kept_processes[c]
            }
            SourceKind::Stdin | SourceKind::Detached { .. } => true,
        }
    }

    /// The old sources that will be read on: carried over, or (a FIFO
    /// someone removed) detached. Any other is read one last time.
    fn staying_sources(&self, next: &Next) -> HashSet<SourceId> {
        let still_input =
            |o: usize| next.successors[o].is_some_and(|i| next.config.fifos[i].role == Role::Input);
        self.sources
            .iter()
            .filter(|&(s, source)| match source.kind {
                // A removed node is read on while its FIFO stays an input.
                SourceKind::Fifo { fifo, .. } | SourceKind::Detached { fifo } => still_input(fifo),
                SourceKind::Stdin => next.diff.carries_stdin,
                SourceKind::Stdout(_) | SourceKind::Stderr(_) | SourceKind::Log(_) => {
                    self.same_stream(s, next)
                }
            })
            .map(|(s, _)| s)
            .collect()
    }

    /// The FIFOs `next` keeps, with their mode and owner set as it says: a
    /// running one at the same path, or a retiring one brought back.
    fn take_kept_fifos(&mut self, next: &mut Next, old_fifos: &mut [Option<ManagedFifo>]) {
        for i in 0..next.config.fifos.len() {
            if next.fifos[i].is_some() {
                continue;
            }
            let spec = &next.config.fifos[i];
            // A running FIFO whose mode, owner and group the config leaves
            // as they were is not looked at (a reload of a large config
            // touches only what changed).
            let mut attributes_changed = true;
            if let FifoPlan::Keep(o) = next.diff.fifos[i] {
                next.fifos[i] = old_fifos[o].take();
                let old = &self.config.fifos[o];
                attributes_changed =
                    (old.mode, old.owner, old.group) != (spec.mode, spec.owner, spec.group);
            }
            let reclaimed = (next.diff.fifos[i] == FifoPlan::Reclaim)
                .then(|| self.retiring.reclaim(&spec.path))
                .flatten();
            if let Some((fifo, fd, rest)) = reclaimed {
                // What it still had to write goes first.
                next.changes.push(format!(
                    "fifo {}: kept, as it was still being removed",
                    spec.name
                ));
                next.reclaimed.push((i, rest));
                next.spare.entry(spec.path.clone()).or_default().push(fd);
                next.fifos[i] = Some(fifo);
            }
            if let Some(fifo) = next.fifos[i].as_ref().filter(|_| attributes_changed) {
                match fifo.set_attributes(spec) {
                    Ok(done) if !done.is_empty() => {
                        next.changes
                            .push(format!("fifo {}: {}", spec.name, done.join(", ")));
                    }
                    Ok(_) => {}
                    Err(e) => warn!("{e}"),
                }
            }
        }
    }

    /// Sources of `next` take over the fd, counters and line in progress
    /// of the same stream in the running tables.
    fn carry_sources(&mut self, next: &mut Next) {
        let mut input_of_fifo = vec![None; self.config.fifos.len()];
        let mut own_stdin = None;
        for (s, source) in self.sources.iter() {
            match source.kind {
                SourceKind::Fifo { fifo, .. } => input_of_fifo[fifo] = Some(s),
                SourceKind::Stdin => own_stdin = Some(s),
                SourceKind::Stdout(_)
                | SourceKind::Stderr(_)
                | SourceKind::Log(_)
                | SourceKind::Detached { .. } => {}
            }
        }
        for n in 0..next.tables.sources.len() {
            // Not carried: a process that starts anew, a FIFO made again,
            // an input whose ends start or stop being forwarded (opened
            // anew, the other way).
            let old = match next.tables.sources[n].kind {
                SourceKind::Fifo { fifo, .. } => match next.diff.fifos[fifo] {
                    FifoPlan::Keep(o) if next.diff.carried_inputs[fifo] => input_of_fifo[o],
                    _ => None,
                },
                SourceKind::Stdout(c) => next.diff.processes[c].and_then(|o| self.ends[o].stdout),
                SourceKind::Stderr(c) | SourceKind::Log(c) => {
                    next.diff.processes[c].and_then(|o| self.ends[o].stderr)
                }
                SourceKind::Stdin => own_stdin.filter(|_| next.diff.carries_stdin),
                SourceKind::Detached { .. } => None,
            };
            let Some(s) = old else {
                continue;
            };
            // The same stream keeps its slot, and its epoll registration
            // with it (it is watched again only if it was paused).
            let source = &mut self.sources[s];
            let into = &mut next.tables.sources[n];
            into.fd = source.fd.take();
            into.watched = source.watched;
            into.bytes = source.bytes;
            into.partial = std::mem::take(&mut source.partial);
            next.source_map[s] = Some(n);
            next.kept_sources.push((n, s));
        }
    }

    /// Sinks of `next` take over the same sink's state; its fd too, unless
    /// its process starts anew or its FIFO was made again.
    fn carry_sinks(&mut self, next: &mut Next) {
        let mut output_of_fifo = vec![None; self.config.fifos.len()];
        let mut own_stdout = None;
        for (k, sink) in self.sinks.iter() {
            match sink.kind {
                SinkKind::Fifo(fifo) => output_of_fifo[fifo] = Some(k),
                SinkKind::Stdout => own_stdout = Some(k),
                SinkKind::Stdin(_) => {}
            }
        }
        for n in 0..next.tables.sinks.len() {
            // The same sink: the output at the same path (made again or
            // not), the stdin of the process of the same name (started
            // anew or not), fifod's stdout.
            let (old, process_kept) = match next.tables.sinks[n].kind {
                SinkKind::Fifo(i) => match next.diff.fifos[i] {
                    FifoPlan::Keep(o) | FifoPlan::Make { replaces: Some(o) } => {
                        (output_of_fifo[o], true)
                    }
                    FifoPlan::Reclaim | FifoPlan::Make { replaces: None } => (None, true),
                },
                SinkKind::Stdin(c) => (
                    next.diff.same_name[c].and_then(|o| self.ends[o].stdin),
                    next.diff.processes[c].is_some(),
                ),
                SinkKind::Stdout => (own_stdout, true),
            };
            let Some(k) = old else {
                continue;
            };
            next.sink_map[k] = Some(n);
            let same_pipe = match self.sinks[k].kind {
                SinkKind::Fifo(fifo) => !next.vanished[fifo],
                _ => true,
            };
            let sink = &mut self.sinks[k];
            let into = &mut next.tables.sinks[n];
            into.intake = sink.intake;
            // A sink whose fd stays (or that has none) keeps its slot and
            // its epoll registration.
            if (process_kept && same_pipe) || sink.fd.is_none() {
                into.fd = sink.fd.take();
                into.watched = sink.watched;
                next.kept_sinks.push((n, k));
            }
            if same_pipe {
                into.keep_alive = sink.keep_alive.take();
                into.end_check = sink.end_check;
            }
        }
        // Bytes a retiring output brought back still had to write.
        for (i, bytes) in std::mem::take(&mut next.reclaimed) {
            if bytes.is_empty() {
                continue;
            }
            let n = next
                .tables
                .sinks
                .iter()
                .position(|k| k.kind == SinkKind::Fifo(i));
            match n {
                Some(n) => next.given_back.push((n, bytes)),
                None => warn!(
                    "fifo {}: no longer an output: {} bytes it still had to write are dropped",
                    next.config.fifos[i].name,
                    bytes.len()
                ),
            }
        }
    }

    /// The node of an input someone removed is read until its writers
    /// leave, as one more source of the routes of the FIFO made again.
    /// Bytes written into the node of an output someone removed, and not
    /// read, are taken back to go to the FIFO made again.
    fn detach_vanished(&mut self, next: &mut Next) {
        let detached_before: Vec<SourceId> = self
            .sources
            .iter()
            .filter(|(_, source)| matches!(source.kind, SourceKind::Detached { .. }))
            .map(|(s, _)| s)
            .collect();
        if !next.vanished.contains(&true) && detached_before.is_empty() {
            return;
        }
        // For each running FIFO, the input of `next` at its path: (its place
        // in `next.tables`, its FIFO).
        let mut source_of_fifo = vec![None; next.config.fifos.len()];
        for (n, new_source) in next.tables.sources.iter().enumerate() {
            if let SourceKind::Fifo { fifo, .. } = new_source.kind {
                source_of_fifo[fifo] = Some(n);
            }
        }
        let new_input = |o: usize| {
            let i = next.successors[o]?;
            Some((source_of_fifo[i]?, i))
        };
        let mut detached = Vec::new();
        for (s, old) in self.sources.iter() {
            let SourceKind::Fifo { fifo: o, .. } = old.kind else {
                continue;
            };
            let Some(fd) = old.fd.as_ref().filter(|_| next.vanished[o]) else {
                continue;
            };
            let Some((n, i)) = new_input(o) else {
                continue;
            };
            match reopen_node(fd.as_fd(), OFlag::O_RDONLY) {
                Ok(fd) => detached.push((s, n, i, fd, None)),
                Err(e) => warn!(
                    "fifo {}: cannot go on reading its removed node: {e}",
                    old.name
                ),
            }
        }
        // A node detached earlier is read on while its FIFO stays an input:
        // the same stream, slot and registration.
        for s in detached_before {
            let SourceKind::Detached { fifo: o } = self.sources[s].kind else {
                continue;
            };
            let Some((n, i)) = new_input(o) else {
                continue;
            };
            let old = &mut self.sources[s];
            if let Some(fd) = old.fd.take() {
                detached.push((s, n, i, fd, Some((old.watched, old.bytes))));
            }
        }
        for (s, n, i, fd, carried) in detached {
            let id = next.tables.sources.len();
            let mut source = Source::new(
                SourceKind::Detached { fifo: i },
                format!("{} (removed node)", next.config.fifos[i].name),
            );
            source.fd = Some(fd);
            if let Some((watched, bytes)) = carried {
                source.watched = watched;
                source.bytes = bytes;
                next.kept_sources.push((id, s));
            }
            next.tables.sources.push(source);
            for route in &mut next.tables.routes {
                if route.sources.contains(&n) {
                    route.sources.push(id);
                }
            }
            next.source_map[s] = Some(id);
        }
        for (k, sink) in self.sinks.iter() {
            let (SinkKind::Fifo(o), Some(n)) = (sink.kind, next.sink_map[k]) else {
                continue;
            };
            if !next.vanished[o] {
                continue;
            }
            if let Some(fd) = sink.fd.as_ref().or(sink.keep_alive.as_ref()) {
                let bytes = read_back(fd.as_fd());
                if !bytes.is_empty() {
                    next.given_back.push((n, bytes));
                }
            }
        }
    }

    /// Opens what `next` did not take over: new FIFOs' fds (the old fds on
    /// the same node, moved to `spare` first, close only after), fifod's own
    /// streams, and a held fd for FIFOs in no route. Returns the footprint's
    /// FIFOs for `next`, in its order.
    fn open_new_fds(&mut self, next: &mut Next) -> Vec<ManagedFifo> {
        // Whatever fds the old tables still have on FIFOs are spare.
        for source in self.sources.values_mut() {
            if let (SourceKind::Fifo { fifo, .. }, Some(fd)) = (source.kind, source.fd.take()) {
                let path = self.config.fifos[fifo].path.clone();
                next.spare.entry(path).or_default().push(fd);
            }
        }
        for sink in self.sinks.values_mut() {
            if let SinkKind::Fifo(fifo) = sink.kind {
                let path = &self.config.fifos[fifo].path;
                let fds = next.spare.entry(path.clone()).or_default();
                fds.extend(sink.fd.take());
                fds.extend(sink.keep_alive.take());
            }
        }
        let mut fifos: Vec<ManagedFifo> = std::mem::take(&mut next.fifos)
            .into_iter()
            .flatten()
            .collect();
        for source in &mut next.tables.sources {
            if let (SourceKind::Fifo { fifo, sessions }, None) = (source.kind, &source.fd) {
                let previous = next
                    .spare
                    .remove(&next.config.fifos[fifo].path)
                    .unwrap_or_default();
                source.fd = input_fd(&mut fifos[fifo], sessions, previous)
                    .map_err(|e| error!("fifo {}: {e}; not reading it", source.name))
                    .ok();
            }
        }
        // An output between sessions keeps only its spare reader until the
        // next writer: it is not opened for writing here.
        for sink in &mut next.tables.sinks {
            if let (SinkKind::Fifo(fifo), None, None) = (sink.kind, &sink.fd, &sink.keep_alive) {
                sink.fd = read_write_fd(&mut fifos[fifo])
                    .map_err(|e| error!("fifo {}: {e}; not writing it", sink.name))
                    .ok();
            }
        }
        next.tables.take_std_streams();
        for (fifo, spec) in fifos.iter_mut().zip(&next.config.fifos) {
            if spec.role == Role::Unrouted
                && let Err(e) = fifo.hold()
            {
                warn!("{e}");
            }
        }
        fifos
    }

    /// The relay for `next`, with the running one's state carried over
    /// (routes matched by their endpoints and framing), and the bytes held
    /// for sinks nothing feeds any more, by old sink.
    fn carry_relay(&mut self, next: &mut Next) -> (Relay, Vec<(SinkId, Vec<u8>)>) {
        let route_map = &next.diff.routes;
        let kept = route_map.iter().flatten().count();
        let (old_count, new_count) = (self.config.routes.len(), next.config.routes.len());
        if kept != old_count || kept != new_count {
            next.changes.push(format!(
                "routes: {kept} kept, {} removed or changed, {} new",
                old_count - kept,
                new_count - kept
            ));
        }
        let slots = (self.sources.slot_count(), self.sinks.slot_count());
        let old_relay = std::mem::replace(&mut self.relay, Relay::new(&[], 0, 0));
        let map = RelayMap {
            routes: route_map,
            sources: &next.source_map,
            sinks: &next.sink_map,
        };
        let (mut relay, leftovers) = Relay::carry(old_relay, &next.tables.routes, &map, slots);
        for (n, bytes) in std::mem::take(&mut next.given_back) {
            info!(
                "{}: {} bytes written but not read yet are held for it again, first in line",
                self.sinks[n].name,
                bytes.len()
            );
            relay.give_back(n, &bytes);
        }
        (relay, leftovers)
    }

    /// FIFOs `next` does not have: an input goes at once; an output with
    /// bytes to deliver retires; bytes for other sinks nothing feeds any
    /// more are dropped, and logged.
    fn retire_removed(
        &mut self,
        next: &mut Next,
        old_fifos: Vec<Option<ManagedFifo>>,
        leftovers: Vec<(SinkId, Vec<u8>)>,
        removed_sinks: Vec<(SinkId, Sink)>,
    ) {
        let timeout = next.config.daemon.shutdown_timeout;
        let deadline = Instant::now() + timeout;
        let removed_sinks: HashMap<SinkId, Sink> = removed_sinks.into_iter().collect();
        // By the sink's kind in the running config.
        let mut left_for: HashMap<SinkKind, (String, Vec<u8>)> = HashMap::default();
        for (k, bytes) in leftovers {
            // Bytes are left over only for sinks that left the tables.
            let Some(sink) = removed_sinks.get(&k) else {
                warn!(
                    "{} held bytes for a sink no longer known are dropped",
                    bytes.len()
                );
                continue;
            };
            left_for
                .entry(sink.kind)
                .or_insert_with(|| (sink.name.clone(), Vec::new()))
                .1
                .extend(bytes);
        }
        for (o, fifo) in old_fifos.into_iter().enumerate() {
            let Some(fifo) = fifo else {
                continue;
            };
            let spec = &self.config.fifos[o];
            if next.vanished[o] {
                // Its path is someone else's now, or the new FIFO's: the
                // old node is left to whoever moved it, if anyone.
                next.spare.remove(&spec.path);
                continue;
            }
            next.changes.push(format!("removed fifo {}", fifo.name));
            let bytes = left_for
                .remove(&SinkKind::Fifo(o))
                .map(|(_, b)| b)
                .unwrap_or_default();
            // Opened before the old fds close, so the pipe keeps its bytes
            // while it retires.
            let fd = match (spec.role == Role::Output).then(|| fifo.reopen(Access::ReadWrite)) {
                Some(Ok(fd)) => Some(fd),
                Some(Err(e)) => {
                    if !bytes.is_empty() {
                        warn!("{e}: {} bytes held for it are dropped", bytes.len());
                    }
                    None
                }
                None => None,
            };
            let fd = fd.filter(|fd| !bytes.is_empty() || pipe::queued_bytes(fd.as_fd()) > 0);
            next.spare.remove(&spec.path);
            let Some(fd) = fd else {
                Footprint::remove_fifo(&fifo);
                continue;
            };
            info!(
                "fifo {}: removed from the config; its path stays until its reader has what \
                 fifod holds for it ({} bytes), or for {}",
                fifo.name,
                bytes.len(),
                format_duration(timeout)
            );
            self.retiring.retire(fifo, fd, bytes, deadline);
        }
        for (name, bytes) in left_for.into_values() {
            if !bytes.is_empty() {
                warn!(
                    "{name}: no longer fed by any route: {} bytes held for it are dropped",
                    bytes.len()
                );
            }
        }
    }

    /// Running processes `next` does not keep get SIGTERM, and SIGKILL
    /// after the grace if they are still there.
    fn stop_replaced(&mut self, next: &mut Next) {
        let now = Instant::now();
        for child in std::mem::take(&mut next.replaced) {
            if !next.config.processes.iter().any(|p| p.name == child.name()) {
                next.changes
                    .push(format!("removed process {}", child.name()));
            }
            if let Some(pid) = child.pid {
                self.replaced.stop(child.name(), pid, now);
            }
        }
    }

    /// Reads from `s` what its sinks already have through `tee`, so that
    /// no lane is ahead of it. Bytes the stream no longer has (someone else
    /// read them) count as taken.
    pub(super) fn settle(&mut self, s: SourceId) {
        let mut interrupted = 0;
        loop {
            let need = self.relay.ahead_of(s);
            if need == 0 {
                return;
            }
            if self.take_from(s, need.min(READ_CHUNK)) > 0 {
                continue;
            }
            // Nothing came: the read was interrupted, or the bytes are gone.
            let queued = self.sources[s]
                .fd
                .as_ref()
                .map_or(0, |fd| pipe::queued_bytes(fd.as_fd()));
            if queued == 0 {
                self.relay.commit_ahead(s);
                return;
            }
            interrupted += 1;
            if interrupted == SETTLE_TRIES {
                // The lead is carried over and settled by the next reads.
                warn!(
                    "{}: cannot be read now; reloading anyway",
                    self.sources[s].name
                );
                return;
            }
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
        if self.sources[s].kind.is_logged() {
            self.flush_log_line(s);
        }
    }
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

/// A reload has two configs' tables alive for a moment, and the loader's
/// thread allocates the new config in an arena of its own: what they took
/// is handed back to the system, so that fifod's resident size after a
/// reload stays that of one config.
fn give_memory_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's
    // arenas; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Removes the FIFOs a failed reload made (those it adopted stay).
fn undo_made(fifos: &[Made]) {
    for (fifo, _) in fifos.iter().flatten().filter(|(f, _)| !f.adopted) {
        Footprint::remove_fifo(fifo);
    }
}
