//! What fifod keeps in the service manager's fd store (`fdstore`), and
//! what it takes back from it when it starts after a crash.
//!
//! The store holds, by name, the fd fifod has on each FIFO it manages and
//! both ends of every lane pipe that holds bytes. After a crash the FIFOs'
//! pipes lived on in the store, writers and readers connected; the lane
//! pipes come back with what they held and go back to their lanes, found by
//! route and sink name.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use log::{error, info, warn};
use nix::fcntl::{FcntlArg, OFlag, fcntl};

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::{Daemon, SinkKind, SourceKind};
use crate::fdstore::{self, Stored};
use crate::fifo::NodeId;
use crate::pipe::{self, PrivatePipe};
use crate::relay::{LaneId, SinkId, SourceId};

/// What a FIFO's stored fd is: the node, and how it is open. fifod stores
/// its fd again only when what it holds differs in one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Held {
    node: NodeId,
    access: OFlag,
}

impl Held {
    fn of(fd: BorrowedFd<'_>) -> Option<Held> {
        let node = NodeId::of_fd(fd).ok()?;
        let flags = fcntl(fd, FcntlArg::F_GETFL).ok()?;
        Some(Held {
            node,
            access: OFlag::from_bits_truncate(flags) & OFlag::O_ACCMODE,
        })
    }
}

impl Daemon {
    /// Takes back what an earlier fifod stored: FIFOs' fds that are still
    /// on their nodes (the store keeps its copy; fifod's own fds are on the
    /// same pipes), and lane pipes with their bytes. What no longer fits
    /// the config is taken out of the store, its bytes counted as lost.
    /// Then stores every FIFO not stored yet.
    pub(super) fn take_back(&mut self, stored: Stored) {
        let Stored {
            mut fifos,
            mut lanes,
            journals,
            line_logs,
            state,
            processes,
            running,
            stale,
        } = stored;
        self.handed_processes = processes;
        self.take_back_running(running);
        let mut kept_fifos = 0;
        for f in 0..self.footprint.fifos.len() {
            let managed = &self.footprint.fifos[f];
            if managed.passed {
                continue;
            }
            let Some(fd) = fifos.remove(&managed.name) else {
                continue;
            };
            let name = fdstore::fifo_name(&managed.name);
            match Held::of(fd.as_fd()) {
                Some(held) if held.node == managed.node_id() => {
                    self.fd_store.known(&name, 1);
                    self.fifo_held.insert(managed.name.clone(), held);
                    kept_fifos += 1;
                }
                _ => self.fd_store.forget(&name),
            }
        }
        for name in fifos.into_keys() {
            self.fd_store.forget(&fdstore::fifo_name(&name));
        }

        let mut kept_lanes = 0;
        let mut kept_bytes = 0;
        let mut flush = Vec::new();
        let live: Vec<(LaneId, SinkId, bool)> = self
            .relay
            .live_lanes()
            .map(|(l, lane)| (l, lane.sink, lane.lines()))
            .collect();
        for (l, k, _) in live {
            let name = self.lane_store_name(l);
            let Some((read, write)) = lanes.remove(&name) else {
                continue;
            };
            let n = pipe::queued_bytes(read.as_fd());
            let capacity = pipe::capacity(read.as_fd()).unwrap_or(n);
            let pipe = PrivatePipe {
                read,
                write,
                capacity,
            };
            if self.lane_pipes.adopt(l, pipe, name.clone()) {
                self.fd_store.known(&name, 2);
                self.relay.recovered_pipe(l, n);
                kept_lanes += 1;
                kept_bytes += n;
                flush.push(k);
            } else {
                self.fd_store.forget(&name);
            }
        }
        for (name, (read, _)) in lanes {
            let n = pipe::queued_bytes(read.as_fd());
            if n > 0 {
                error!(
                    "{n} bytes held before a restart for {} are lost: the config has no such \
                     lane now",
                    name.trim_start_matches(fdstore::PREFIX)
                );
            }
            self.fd_store.forget(&name);
        }
        for name in stale {
            self.fd_store.forget(&name);
        }
        if kept_fifos + kept_lanes > 0 {
            info!(
                "took back what the fifod before held: {kept_fifos} FIFOs, \
                 {kept_lanes} lane pipes holding {kept_bytes} bytes"
            );
        }
        self.take_back_journals(journals);
        self.take_back_line_logs(line_logs);
        if let Some(state) = state {
            self.take_back_memory(state);
        }
        self.store_fifos();
        // Sinks with bytes handed over in memory, too.
        flush.extend(
            self.sinks
                .ids()
                .into_iter()
                .filter(|&k| self.relay.held_for(k) > 0),
        );
        flush.sort_unstable();
        flush.dedup();
        for k in flush {
            self.flush(k);
        }
    }

    /// Every lane, by the name its pipe is stored under.
    pub(super) fn lanes_by_store_name(&self) -> std::collections::HashMap<String, LaneId> {
        self.relay
            .live_lanes()
            .map(|(l, _)| (self.lane_store_name(l), l))
            .collect()
    }

    /// The source named `name` (a stored name's), if the config has it.
    pub(super) fn source_named(&self, name: &str) -> Option<SourceId> {
        self.sources
            .iter()
            .find_map(|(s, source)| (source.name == name).then_some(s))
    }

    /// A new journal memfd (`what` names it in /proc), stored as
    /// `stored_as`; `None` (logged) if either fails: what it would keep is
    /// then not kept across a crash.
    pub(super) fn stored_journal(
        &mut self,
        what: &str,
        stored_as: &str,
    ) -> Option<super::journal::Journal> {
        let journal = match super::journal::Journal::new(what) {
            Ok(journal) => journal,
            Err(e) => {
                warn!(
                    "{what}: cannot make its journal ({}): it is not kept across a crash",
                    e.desc()
                );
                return None;
            }
        };
        self.fd_store
            .store(stored_as, &[journal.fd()])
            .then_some(journal)
    }

    /// The name `lane`'s pipe is stored under.
    pub(super) fn lane_store_name(&self, lane: LaneId) -> String {
        let lane = &self.relay.lanes()[lane];
        let route = self
            .config
            .routes
            .get(lane.route)
            .map_or_else(|| format!("route[{}]", lane.route), |r| r.name.clone());
        fdstore::lane_name(&route, &self.sinks[lane.sink].name)
    }

    /// Stores both ends of `lane`'s pipe. False if the store would not
    /// take them.
    pub(super) fn store_lane_pipe(&mut self, lane: LaneId) -> bool {
        let name = self.lane_store_name(lane);
        let Some(pipe) = self.lane_pipes.get(lane) else {
            return false;
        };
        if !self
            .fd_store
            .store(&name, &[pipe.read.as_fd(), pipe.write.as_fd()])
        {
            return false;
        }
        self.lane_pipes.set_stored_as(lane, Some(name));
        true
    }

    /// Takes the pipes lanes gave back out of the store.
    pub(super) fn unstore_lane_pipes(&mut self) {
        for name in self.lane_pipes.take_unstore() {
            self.fd_store.remove(&name);
        }
    }

    /// The fd fifod holds on each FIFO now, by FIFO index.
    pub(super) fn fifo_fds(&self) -> Vec<Option<BorrowedFd<'_>>> {
        let mut fds: Vec<Option<BorrowedFd<'_>>> =
            self.footprint.fifos.iter().map(|f| f.fd()).collect();
        for s in self.sources.values() {
            if let SourceKind::Fifo { fifo, .. } = s.kind {
                fds[fifo] = s.fd.as_ref().map(AsFd::as_fd);
            }
        }
        for k in self.sinks.values() {
            if let SinkKind::Fifo(fifo) = k.kind {
                fds[fifo] = k.fd.as_ref().or(k.keep_alive.as_ref()).map(AsFd::as_fd);
            }
        }
        fds
    }

    /// Brings the store in line with the FIFOs fifod manages: each one's fd
    /// is stored (again, if fifod holds it differently now), and FIFOs no
    /// longer managed are taken out.
    pub(super) fn store_fifos(&mut self) {
        if !self.fd_store.enabled() {
            return;
        }
        let mut managed = HashSet::default();
        let mut changed = Vec::new();
        for (f, fd) in self.fifo_fds().into_iter().enumerate() {
            let fifo = &self.footprint.fifos[f];
            if fifo.passed {
                continue;
            }
            managed.insert(fifo.name.clone());
            let Some(fd) = fd else { continue };
            let Some(held) = Held::of(fd) else { continue };
            if self.fifo_held.get(&fifo.name) != Some(&held) {
                match fd.try_clone_to_owned() {
                    Ok(fd) => changed.push((fifo.name.clone(), held, fd)),
                    Err(e) => warn!("fifo {}: cannot store its fd: {e}", fifo.name),
                }
            }
        }
        for (name, held, fd) in changed {
            if self
                .fd_store
                .store(&fdstore::fifo_name(&name), &[fd.as_fd()])
            {
                self.fifo_held.insert(name, held);
            }
        }
        let gone: Vec<String> = self
            .fifo_held
            .keys()
            .filter(|n| !managed.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            self.fifo_held.remove(&name);
            self.fd_store.remove(&fdstore::fifo_name(&name));
        }
        // Lanes a reload kept may belong to a route or sink of another name.
        self.unstore_lane_pipes();
        for l in 0..self.relay.lanes().len() {
            let Some(stored) = self.lane_pipes.stored_as(l) else {
                continue;
            };
            if stored != self.lane_store_name(l) {
                // Under the new name first: a crash in between finds the
                // pipe under one name or both, never under none.
                let stored = stored.to_string();
                let kept = self.store_lane_pipe(l);
                self.fd_store.remove(&stored);
                if !kept {
                    self.lane_pipes.set_stored_as(l, None);
                    warn!(
                        "{}: its held bytes are no longer in the service manager's fd store",
                        self.lane_store_name(l).trim_start_matches(fdstore::PREFIX)
                    );
                }
            }
        }
        // Then the journals name them as they are stored now.
        self.settle_journals();
        self.check_line_logs();
    }

    /// Stores FIFO `f`'s fd unless the store has it as fifod holds it now
    /// (after an output's end of session, or a new one).
    pub(super) fn store_fifo(&mut self, f: usize) {
        if !self.fd_store.enabled() || self.footprint.fifos[f].passed {
            return;
        }
        let Some(fd) = self.fifo_fds().swap_remove(f) else {
            return;
        };
        let name = self.footprint.fifos[f].name.clone();
        let Some(held) = Held::of(fd) else { return };
        if self.fifo_held.get(&name) == Some(&held) {
            return;
        }
        // A duplicate to send: `fd` borrows `self`, and so would the store.
        match fd.try_clone_to_owned() {
            Ok(fd) => {
                if self
                    .fd_store
                    .store(&fdstore::fifo_name(&name), &[fd.as_fd()])
                {
                    self.fifo_held.insert(name, held);
                }
            }
            Err(e) => warn!("fifo {name}: cannot store its fd: {e}"),
        }
    }
}

impl Daemon {
    /// Takes back the processes an earlier fifod stored before it died:
    /// each that still runs, with the pipes it has open (checked by the
    /// pipes' inodes in /proc), is adopted rather than started again; the
    /// others' pipes are taken out of the store.
    fn take_back_running(&mut self, running: Vec<(String, i32, String, OwnedFd)>) {
        let mut by_process: HashMap<(String, i32), Vec<(String, OwnedFd)>> = HashMap::default();
        for (name, pid, stream, fd) in running {
            by_process
                .entry((name, pid))
                .or_default()
                .push((stream, fd));
        }
        for ((name, pid), streams) in by_process {
            let alive = streams
                .iter()
                .all(|(stream, fd)| holds(pid, stream, fd.as_fd()));
            let known = self.children.iter().any(|c| c.name() == name);
            for (stream, fd) in streams {
                let stored_as = fdstore::running_name(&name, pid, &stream);
                if alive && known {
                    self.fd_store.known(&stored_as, 1);
                    self.handed_processes.insert(format!("{name}/{stream}"), fd);
                } else {
                    self.fd_store.forget(&stored_as);
                }
            }
            if alive && known {
                self.adopted
                    .insert(name.clone(), nix::unistd::Pid::from_raw(pid));
                self.foreign.insert(name);
            }
        }
    }

    /// Stores the pipes of process `c`, which runs now.
    pub(super) fn store_running(&mut self, c: usize) {
        if !self.fd_store.enabled() {
            return;
        }
        let Some(pid) = self.children[c].pid else {
            return;
        };
        let name = self.children[c].name().to_string();
        let ends = self.ends[c];
        let mut fds: Vec<(String, OwnedFd)> = Vec::new();
        let streams = [
            ("stdin", ends.stdin.and_then(|k| self.sinks[k].fd.as_ref())),
            (
                "stdout",
                ends.stdout.and_then(|s| self.sources[s].fd.as_ref()),
            ),
            (
                "stderr",
                ends.stderr.and_then(|s| self.sources[s].fd.as_ref()),
            ),
        ];
        for (stream, fd) in streams {
            if let Some(Ok(fd)) = fd.map(|fd| fd.try_clone()) {
                fds.push((fdstore::running_name(&name, pid.as_raw(), stream), fd));
            }
        }
        for (stored_as, fd) in fds {
            if self.fd_store.store(&stored_as, &[fd.as_fd()]) {
                self.running_stored.entry(c).or_default().push(stored_as);
            }
        }
    }

    /// Takes process `c`'s pipes out of the store: it exited.
    pub(super) fn unstore_running(&mut self, c: usize) {
        for stored_as in self.running_stored.remove(&c).unwrap_or_default() {
            self.fd_store.remove(&stored_as);
        }
    }
}

/// Whether process `pid` has the pipe `fd` is on open as its `stream`
/// (fd 0, 1 or 2): the same process, still running, with its pipes.
fn holds(pid: i32, stream: &str, fd: BorrowedFd<'_>) -> bool {
    let n = match stream {
        "stdin" => 0,
        "stdout" => 1,
        "stderr" => 2,
        _ => return false,
    };
    let Ok(st) = nix::sys::stat::fstat(fd) else {
        return false;
    };
    std::fs::read_link(format!("/proc/{pid}/fd/{n}"))
        .is_ok_and(|target| target.to_string_lossy() == format!("pipe:[{}]", st.st_ino))
}
