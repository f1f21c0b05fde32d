//! Line routes under an fd store: a source's bytes go into a log, a memfd
//! in the store (`fifod/lines/SOURCE`), and from there, in runs of whole
//! lines, into the pipes of the lanes it feeds. Nothing of a line route is
//! then in fifod's memory alone: a line in progress is the log's tail, a
//! held line is in a lane's pipe.
//!
//! The log's first bytes are a journal (`journal::RECORDS`); the bytes
//! taken from the source follow. `splice` moves them from the source into
//! the log, so what the source gave is what the log's length says. Giving
//! a run `done..cut` out writes a *lines-in-flight* record (how much each
//! lane's pipe held), writes the run into each pipe (whole: there is room
//! for it), then a *lines-settled* record (`done = cut`). After a crash, an
//! in-flight record is rolled forward: each lane gets the part of the run
//! its pipe did not get, read back from the log.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;

use log::{error, info, warn};
use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, SpliceFFlags, fallocate, splice};

use super::journal::{Journal, LaneMark, RECORDS, Record};
use super::{Daemon, SourceKind, State};
use crate::config::WhenFull;
use crate::fdstore;
use crate::pipe;
use crate::relay::{LaneId, SinkId, SourceId};

/// The most bytes looked at for one run.
const RUN_MAX: usize = 256 * 1024;
/// Given-out bytes are freed from the log in steps of this.
const FREE_STEP: u64 = 1024 * 1024;

/// One source's log.
#[derive(Debug)]
pub(super) struct LineLog {
    journal: Journal,
    /// Bytes taken from the source, all told.
    end: u64,
    /// Bytes given out to the lanes.
    done: u64,
    /// Bytes before this are freed (holes punched in the memfd).
    freed: u64,
    /// The line in progress already went on in pieces.
    in_long_line: bool,
}

impl LineLog {
    /// Bytes taken from the source and not given out yet.
    pub(super) fn pending(&self) -> usize {
        usize::try_from(self.end - self.done).unwrap_or(usize::MAX)
    }

    fn file(&self) -> &File {
        self.journal.file()
    }

    pub(super) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.journal.fd()
    }

    /// Reads `len` bytes of the log from `at` into `buf`.
    fn read(&self, at: u64, len: usize, buf: &mut Vec<u8>) -> std::io::Result<()> {
        buf.resize(len, 0);
        self.file().read_exact_at(buf, RECORDS + at)
    }
}

impl Daemon {
    /// Whether `s` keeps its lines in a log: with an fd store, for an input
    /// FIFO whose routes all frame lines (`Relay::log_max_line`). Its
    /// shortest `max_line` if so.
    fn log_max_line(&self, s: SourceId) -> Option<usize> {
        if !self.fd_store.enabled() || !matches!(self.sources[s].kind, SourceKind::Fifo { .. }) {
            return None;
        }
        self.relay.log_max_line(s)
    }

    /// The most bytes `s`'s log holds before the source waits: the
    /// smallest `buffer` of the lanes it feeds.
    fn log_cap(&self, s: SourceId) -> usize {
        self.relay
            .lanes_fed_by(s)
            .iter()
            .map(|&l| self.relay.lanes()[l].capacity())
            .min()
            .unwrap_or(0)
    }

    /// Reads `s` into its log and gives out the lines that are whole, if
    /// `s` keeps its lines in a log. False if it does not: the copying
    /// path reads it.
    pub(super) fn read_into_line_log(&mut self, s: SourceId) -> bool {
        if !self.fd_store.enabled() && self.line_logs.is_empty() {
            return false;
        }
        if self.log_max_line(s).is_none() {
            self.hand_over_line_log(s);
            return false;
        }
        if !self.line_log_ready(s) {
            return false;
        }
        let name = self.sources[s].name.clone();
        let cap = self.log_cap(s);
        let quota = self.sources[s].quota.unwrap_or(usize::MAX);
        let mut ended = false;
        if let (Some(log), Some(fd)) = (self.line_logs.get_mut(&name), &self.sources[s].fd) {
            let room = cap.saturating_sub(log.pending()).min(quota).min(RUN_MAX);
            if room > 0 {
                let mut at = i64::try_from(RECORDS + log.end).unwrap_or(i64::MAX);
                match splice(
                    fd.as_fd(),
                    None,
                    log.file(),
                    Some(&mut at),
                    room,
                    SpliceFFlags::SPLICE_F_NONBLOCK,
                ) {
                    Ok(0) => ended = true,
                    Ok(n) => {
                        log.end += n as u64;
                        self.sources[s].bytes += n as u64;
                        if let Some(q) = &mut self.sources[s].quota {
                            *q = q.saturating_sub(n);
                        }
                    }
                    Err(Errno::EAGAIN | Errno::EINTR) => {}
                    Err(e) => {
                        error!(
                            "{name}: cannot keep its lines ({}): no longer reading it",
                            e.desc()
                        );
                        self.set_source_fd(s, None);
                    }
                }
            }
        }
        self.give_out_lines(s, ended);
        if ended {
            self.source_ended(s);
        } else if self
            .line_logs
            .get(&name)
            .is_some_and(|log| log.pending() >= cap)
            || self.sources[s].quota == Some(0)
        {
            // Resumed when the lanes took some (`give_out_lines`).
            self.pause(s);
        }
        true
    }

    /// Makes sure `s` has a log in the store. False if it cannot: its
    /// lines then go the way they go without a store.
    fn line_log_ready(&mut self, s: SourceId) -> bool {
        let name = &self.sources[s].name;
        if self.line_logs.contains_key(name) {
            return true;
        }
        let what = format!("lines:{name}");
        let stored_as = fdstore::line_log_name(name);
        let Some(journal) = self.stored_journal(&what, &stored_as) else {
            return false;
        };
        let name = &self.sources[s].name;
        let log = LineLog {
            journal,
            end: 0,
            done: 0,
            freed: 0,
            in_long_line: false,
        };
        self.line_logs.insert(name.clone(), log);
        true
    }

    /// Gives out the runs of whole lines `s`'s log has, as far as the lanes
    /// have room; at the source's end (`ended`), its last piece too.
    pub(super) fn give_out_lines(&mut self, s: SourceId, ended: bool) {
        let name = self.sources[s].name.clone();
        let Some(max_line) = self.relay.log_max_line(s) else {
            return;
        };
        let mut run = Vec::new();
        loop {
            let Some(log) = self.line_logs.get(&name) else {
                return;
            };
            let pending = log.pending();
            if pending == 0 {
                break;
            }
            let want = pending.min(RUN_MAX.max(max_line));
            if let Err(e) = log.read(log.done, want, &mut run) {
                error!("{name}: its log cannot be read ({e}): its lines go on without it");
                self.hand_over_line_log(s);
                return;
            }
            let (mut cut, long) = match memchr::memrchr(b'\n', &run) {
                Some(i) => (i + 1, false),
                None if run.len() >= max_line => (max_line, true),
                None if ended && want == pending => (run.len(), false),
                None => break,
            };
            // Room in every lane that blocks; the others drop what does
            // not fit, whole.
            let lanes = self.relay.lanes_fed_by(s);
            let mut rooms = Vec::with_capacity(lanes.len());
            // A lane whose pipe is empty and still has no room for the run.
            let mut never_fits = false;
            for &l in &lanes {
                let Some(room) = self.line_lane_room(l) else {
                    warn!("{name}: a lane has no pipe for its lines: they go on without a log");
                    self.hand_over_line_log(s);
                    return;
                };
                rooms.push(room);
                if self.relay.lanes()[l].policy() == WhenFull::Block && room < cut {
                    never_fits |= self.relay.lanes()[l].held() == 0;
                    cut = if long {
                        0
                    } else {
                        memchr::memrchr(b'\n', &run[..room]).map_or(0, |i| i + 1)
                    };
                }
            }
            if cut == 0 {
                if never_fits {
                    // A pipe smaller than a line (a small `buffer`, or the
                    // pipe budget spent): such lines go the copying way.
                    warn!(
                        "{name}: a line does not fit in a lane's pipe: its lines go through \
                         memory (not kept across a crash) until they fit again"
                    );
                    self.hand_over_line_log(s);
                }
                break;
            }
            let run = &run[..cut];
            let receiving: Vec<LaneId> = lanes
                .iter()
                .zip(&rooms)
                .filter(|&(_, &room)| room >= cut)
                .map(|(&l, _)| l)
                .collect();
            let Some(log) = self.line_logs.get_mut(&name) else {
                return;
            };
            let (done, next) = (log.done, log.done + cut as u64);
            let marks = receiving
                .iter()
                .map(|&l| LaneMark {
                    name: self.lane_store_name(l),
                    queued: lane_queued(&self.lane_pipes, l),
                    ahead: 0,
                })
                .collect();
            if !self.write_line_journal(
                &name,
                &Record::LinesInFlight {
                    done,
                    cut: next,
                    lanes: marks,
                },
            ) {
                self.hand_over_line_log(s);
                return;
            }
            for &l in &lanes {
                if receiving.contains(&l) {
                    self.write_run(l, run);
                } else {
                    self.relay.dropped_run(l, run);
                }
            }
            if long {
                let log = self.line_logs.get_mut(&name);
                if let Some(log) = log
                    && !std::mem::replace(&mut log.in_long_line, true)
                {
                    self.relay.long_line_from(s);
                }
            } else if let Some(log) = self.line_logs.get_mut(&name) {
                log.in_long_line = false;
            }
            // The run is in the pipes: the log is past it, whatever the
            // journal says.
            let settled = self.write_line_journal(&name, &Record::LinesSettled { done: next });
            if let Some(log) = self.line_logs.get_mut(&name) {
                log.done = next;
                free_given_out(log);
            }
            if !settled {
                self.hand_over_line_log(s);
                return;
            }
            let sinks: Vec<SinkId> = lanes.iter().map(|&l| self.relay.lanes()[l].sink).collect();
            for k in sinks {
                self.note_drops_of_sink(k);
                self.start_flush_of(k);
            }
        }
        // Room in the log again: the source may be read.
        let cap = self.log_cap(s);
        let source = &self.sources[s];
        if source.paused
            && source.quota != Some(0)
            && self.state != State::Done
            && self
                .line_logs
                .get(&name)
                .is_some_and(|log| log.pending() < cap)
        {
            self.sources[s].paused = false;
            self.watch_source(s);
        }
    }

    /// How many more bytes `lane`'s pipe surely takes, whole, now: the
    /// lane's room (`buffer`) and the pipe's. A pipe counts pages, not
    /// bytes: each write may leave the rest of its last page unused (the
    /// next write fills it only if its own odd part fits), and a read may
    /// leave a part of the front page, so a page per run and two more are
    /// kept aside; bytes taken back after a crash, written in runs not
    /// known, must leave first. `None` if the lane cannot have a stored
    /// pipe.
    fn line_lane_room(&mut self, lane: LaneId) -> Option<usize> {
        let capacity = self.relay.lanes()[lane].capacity();
        if !self.lane_pipes.ensure(lane, capacity) {
            return None;
        }
        if self.lane_pipes.stored_as(lane).is_none() {
            self.unstore_lane_pipes();
            if !self.store_lane_pipe(lane) {
                self.lane_pipes.close(lane);
                return None;
            }
        }
        let pipe = self.lane_pipes.get(lane)?;
        let queued = pipe::queued_bytes(pipe.read.as_fd());
        let (runs, recovered) = self.relay.pipe_runs(lane);
        if recovered > 0 {
            return Some(0);
        }
        let pipe_room = pipe
            .capacity
            .saturating_sub(queued + (runs + 2) * pipe::PAGE);
        Some(self.relay.room(lane).min(pipe_room))
    }

    /// Writes `run` into `lane`'s pipe, which has room for it.
    fn write_run(&mut self, lane: LaneId, run: &[u8]) {
        let mut written = 0;
        if let Some(pipe) = self.lane_pipes.get(lane) {
            while written < run.len() {
                match nix::unistd::write(&pipe.write, &run[written..]) {
                    Ok(n) => written += n,
                    Err(Errno::EINTR) => {}
                    Err(_) => break,
                }
            }
        }
        self.relay.piped_run(lane, &run[..written]);
        if written < run.len() {
            // Room was counted short: the rest of the line goes behind it
            // in memory (and the lane's sources through the copying path
            // until it is written).
            warn!(
                "a lane's pipe took {written} of a run of {} bytes: the rest is held in memory",
                run.len()
            );
            self.relay.held_rest(lane, &run[written..]);
        }
    }

    fn start_flush_of(&mut self, k: SinkId) {
        if !self.sinks[k].watched {
            self.flush(k);
        }
    }

    /// Writes `record` into the journal of `source`'s log. False if it
    /// could not (then logged).
    fn write_line_journal(&mut self, source: &str, record: &Record) -> bool {
        let Some(log) = self.line_logs.get_mut(source) else {
            return false;
        };
        if log.journal.write(record) {
            return true;
        }
        error!("{source}: the journal of its lines cannot be written");
        false
    }

    /// Gives what `s`'s log has not given out yet to the copying path (its
    /// routes changed, fifod is stopping, or the log failed), and takes the
    /// log out of the store: the relay frames `s`'s lines from now on.
    pub(super) fn hand_over_line_log(&mut self, s: SourceId) {
        let name = self.sources[s].name.clone();
        let Some(log) = self.line_logs.remove(&name) else {
            return;
        };
        let pending = log.pending();
        if pending > 0 {
            let mut bytes = Vec::new();
            match log.read(log.done, pending, &mut bytes) {
                Ok(()) => {
                    let sinks = &self.sinks;
                    self.relay.ingest(s, &bytes, |k, bytes| match &sinks[k] {
                        super::Sink {
                            fd: Some(fd),
                            intake: super::Intake::Open,
                            ..
                        } => super::write_some(fd.as_fd(), bytes),
                        _ => 0,
                    });
                }
                Err(e) => error!("{name}: {pending} bytes of its log are lost: {e}"),
            }
        }
        self.fd_store.remove(&fdstore::line_log_name(&name));
        let fed: Vec<SinkId> = self.relay.sinks_of(s).collect();
        for k in fed {
            self.start_flush_of(k);
        }
    }

    /// `hand_over_line_log` for every source: fifod is stopping.
    pub(super) fn hand_over_line_logs(&mut self) {
        for s in self.sources.ids() {
            self.hand_over_line_log(s);
        }
    }

    /// After a reload: logs of sources gone are taken out of the store, and
    /// those of sources whose routes no longer allow a log go to the
    /// copying path.
    pub(super) fn check_line_logs(&mut self) {
        let names: Vec<String> = self.line_logs.keys().cloned().collect();
        for name in names {
            let source = self.source_named(&name);
            match source {
                Some(s) if self.log_max_line(s).is_some() => {}
                Some(s) => self.hand_over_line_log(s),
                None => {
                    self.line_logs.remove(&name);
                    self.fd_store.remove(&fdstore::line_log_name(&name));
                }
            }
        }
    }

    /// Takes back the line logs an earlier fifod stored, once the lane
    /// pipes are back: a run it was giving out when it died is given to the
    /// lanes that did not get all of it, from the log.
    pub(super) fn take_back_line_logs(&mut self, logs: std::collections::HashMap<String, OwnedFd>) {
        let lanes = self.lanes_by_store_name();
        for (name, fd) in logs {
            let stored_as = fdstore::line_log_name(&name);
            let source = self.source_named(&name);
            let Some(s) = source else {
                self.fd_store.forget(&stored_as);
                continue;
            };
            let (journal, record) = Journal::adopt(fd);
            let size = journal.file().metadata().map_or(0, |m| m.len());
            let mut log = LineLog {
                journal,
                end: size.saturating_sub(RECORDS),
                done: 0,
                freed: 0,
                in_long_line: false,
            };
            let mut run = Vec::new();
            match record {
                Some(Record::LinesSettled { done }) => log.done = done,
                Some(Record::LinesInFlight {
                    done,
                    cut,
                    lanes: marks,
                }) => {
                    let len = usize::try_from(cut - done).unwrap_or(0);
                    if let Err(e) = log.read(done, len, &mut run) {
                        error!(
                            "{name}: its log cannot be read ({e}): a run of {len} bytes is lost"
                        );
                        run.clear();
                    }
                    for mark in &marks {
                        let Some(&l) = lanes.get(&mark.name) else {
                            continue;
                        };
                        let got = lane_queued(&self.lane_pipes, l).saturating_sub(mark.queued);
                        if !run.is_empty() && got < run.len() {
                            info!(
                                "{}: {} bytes of a run of lines it was given when fifod died \
                                 come from {name}'s log",
                                mark.name.trim_start_matches(fdstore::PREFIX),
                                run.len() - got
                            );
                            self.write_run(l, &run[got..]);
                        }
                    }
                    log.done = cut;
                }
                _ => {}
            }
            log.done = log.done.min(log.end);
            log.freed = log.done - log.done % FREE_STEP;
            self.fd_store.known(&stored_as, 1);
            self.line_logs.insert(name.clone(), log);
            let done = self.line_logs.get(&name).map_or(0, |log| log.done);
            self.write_line_journal(&name, &Record::LinesSettled { done });
            if self
                .line_logs
                .get(&name)
                .is_some_and(|log| log.pending() > 0)
            {
                self.line_logs_due.push(s);
            }
        }
    }

    /// Gives out what logs hold for sinks that took bytes since.
    pub(super) fn give_out_due(&mut self) {
        while let Some(s) = self.line_logs_due.pop() {
            if self.sources.live(self.sources.key(s)).is_some() {
                self.give_out_lines(s, false);
            }
        }
    }
}

/// How many bytes `lane`'s pipe holds now.
fn lane_queued(pipes: &super::lanes::LanePipes, lane: LaneId) -> usize {
    pipes
        .get(lane)
        .map_or(0, |p| pipe::queued_bytes(p.read.as_fd()))
}

/// Frees the log's given-out bytes in whole steps (holes in the memfd:
/// offsets stay as they are).
fn free_given_out(log: &mut LineLog) {
    let upto = log.done - log.done % FREE_STEP;
    if upto <= log.freed {
        return;
    }
    let (Ok(at), Ok(len)) = (
        i64::try_from(RECORDS + log.freed),
        i64::try_from(upto - log.freed),
    ) else {
        return;
    };
    let mode = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    match fallocate(log.file(), mode, at, len) {
        Ok(()) => log.freed = upto,
        Err(e) => warn!("cannot free given-out bytes of a line log: {}", e.desc()),
    }
}
