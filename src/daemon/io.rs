//! Moving bytes: watching fds, reading sources, writing sinks, zero-copy
//! transfers and the ends of sessions.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use log::{debug, error, info, warn};
use nix::errno::Errno;
use nix::fcntl::{SpliceFFlags, splice, tee};

use super::{
    Daemon, END_POLL_FIRST, END_POLL_MAX, Intake, MAX_LOG_LINE, READ_CHUNK, RESUME_AT,
    SPLICE_CHUNK, Sink, SinkKind, SourceKind, State, write_some,
};
use crate::child;
use crate::event_loop::{Interest, Token};
use crate::fifo::Access;
use crate::pipe;
use crate::relay::{LaneId, Out, Relay, SinkId, SourceId, Target, Took};

/// Splices never block, and move pages rather than copy them when they can.
pub(super) const SPLICE_FLAGS: SpliceFFlags =
    SpliceFFlags::SPLICE_F_NONBLOCK.union(SpliceFFlags::SPLICE_F_MOVE);

/// Lets the first `n` bytes waiting in the pipe `from` go, into /dev/null
/// (`null`), or read into `scratch` and forgotten without it; returns how
/// many went.
pub(super) fn let_go(
    null: Option<&OwnedFd>,
    scratch: &mut [u8],
    from: BorrowedFd<'_>,
    n: usize,
) -> usize {
    if n == 0 {
        return 0;
    }
    if let Some(null) = null {
        return splice(from, None, null, None, n, SPLICE_FLAGS).unwrap_or(0);
    }
    let mut gone = 0;
    while gone < n {
        let want = (n - gone).min(scratch.len());
        match nix::unistd::read(from, &mut scratch[..want]) {
            Ok(0) | Err(_) => break,
            Ok(got) => gone += got,
        }
    }
    gone
}

/// Why a zero-copy transfer moved nothing, when the copying path would
/// only read bytes into memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SpliceStop {
    /// The source holds nothing (and has writers).
    SourceEmpty,
    /// This lane's pipe has no room left, though its `buffer` has.
    LanePipeFull(LaneId),
}

impl Daemon {
    pub(super) fn watch_source(&mut self, s: SourceId) {
        let token = Token::Source(self.sources.key(s));
        let source = &mut self.sources[s];
        if source.watched || source.paused {
            return;
        }
        if let Some(fd) = &source.fd {
            match self.events.add(fd.as_fd(), token, Interest::Read) {
                Ok(()) => source.watched = true,
                Err(e) => error!("{}: cannot watch: {e}", source.name),
            }
        }
    }

    pub(super) fn unwatch_source(&mut self, s: SourceId) {
        let source = &mut self.sources[s];
        if let (true, Some(fd)) = (source.watched, &source.fd) {
            let _ = self.events.remove(fd.as_fd());
        }
        source.watched = false;
    }

    pub(super) fn set_source_fd(&mut self, s: SourceId, fd: Option<OwnedFd>) {
        self.unwatch_source(s);
        // Bytes a `tee` gave lanes ahead of the old stream stay given.
        self.relay.commit_ahead(s);
        self.journal_may_change(s);
        self.sources[s].fd = fd;
        self.watch_source(s);
    }

    pub(super) fn pause(&mut self, s: SourceId) {
        self.unwatch_source(s);
        self.sources[s].paused = true;
    }

    pub(super) fn resume_if_room(&mut self, s: SourceId) {
        let source = &self.sources[s];
        if !source.paused || source.quota == Some(0) || self.state == State::Done {
            return;
        }
        // Enough room to be worth a read, or as much as there will ever be
        // (a small buffer with a line in progress may never reach RESUME_AT).
        let budget = self.relay.read_budget(s, RESUME_AT);
        if budget >= RESUME_AT || (budget > 0 && self.relay.blocking_lanes_empty(s)) {
            self.sources[s].paused = false;
            self.watch_source(s);
        }
    }

    pub(super) fn set_sink_watched(&mut self, k: SinkId, watched: bool) {
        let token = Token::Sink(self.sinks.key(k));
        let sink = &mut self.sinks[k];
        let Some(fd) = &sink.fd else {
            sink.watched = false;
            return;
        };
        if sink.watched == watched {
            return;
        }
        let result = if watched {
            self.events.add(fd.as_fd(), token, Interest::Write)
        } else {
            self.events.remove(fd.as_fd())
        };
        match result {
            Ok(()) => sink.watched = watched,
            Err(e) => error!("{}: cannot watch: {e}", sink.name),
        }
    }

    pub(super) fn set_sink_fd(&mut self, k: SinkId, fd: Option<OwnedFd>) {
        self.set_sink_watched(k, false);
        self.sinks[k].fd = fd;
    }

    // ---- Moving bytes -------------------------------------------------------

    pub(super) fn read_source(&mut self, s: SourceId) {
        if self.read_into_line_log(s) {
            return;
        }
        self.splice_stop = None;
        let moved = self.splice_source(s);
        // With an fd store, bytes of a byte route never wait in fifod's
        // memory, where a crash would take them: they stay in the source
        // until a pipe can take them (the copying path would read them).
        if moved.is_none() && self.fd_store.enabled() {
            match self.splice_stop.take() {
                Some(SpliceStop::SourceEmpty) => return,
                Some(SpliceStop::LanePipeFull(l))
                    if self.relay.lanes()[l].policy() == crate::config::WhenFull::Block =>
                {
                    // Resumed once the sink takes bytes out of the pipe.
                    self.pause(s);
                    return;
                }
                _ => {}
            }
        }
        if let Some(moved) = moved {
            self.sources[s].bytes += moved as u64;
            if let Some(q) = &mut self.sources[s].quota {
                *q = q.saturating_sub(moved);
            }
            if self.sources[s].quota == Some(0) || self.relay.read_budget(s, 1) == 0 {
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
        if self.take_from(s, budget) == 0 {
            return;
        }
        if self.sources[s].quota == Some(0) || self.relay.read_budget(s, 1) == 0 {
            self.pause(s);
        }
    }

    /// One read of up to `max` bytes from `s`, handed to the relay (or the
    /// log); returns how many bytes came. An end or a failure is dealt with
    /// here and returns 0, as does an empty pipe.
    pub(super) fn take_from(&mut self, s: SourceId, max: usize) -> usize {
        let Some(fd) = &self.sources[s].fd else {
            return 0;
        };
        let max = max.min(self.scratch.len());
        let n = match nix::unistd::read(fd.as_fd(), &mut self.scratch[..max]) {
            Ok(n) => n,
            Err(Errno::EAGAIN | Errno::EINTR) => return 0,
            Err(e) => {
                error!(
                    "{}: read failed: {}; no longer reading it",
                    self.sources[s].name,
                    e.desc()
                );
                self.set_source_fd(s, None);
                return 0;
            }
        };
        if n == 0 {
            self.source_ended(s);
            return 0;
        }
        self.sources[s].bytes += n as u64;
        if let Some(q) = &mut self.sources[s].quota {
            *q = q.saturating_sub(n);
        }
        if self.sources[s].kind.is_logged() {
            self.log_lines(s, n);
        } else {
            let sinks = &self.sinks;
            self.relay
                .ingest(s, &self.scratch[..n], |k, bytes| match &sinks[k] {
                    Sink {
                        fd: Some(fd),
                        intake: Intake::Open,
                        ..
                    } => write_some(fd.as_fd(), bytes),
                    _ => 0,
                });
            // What lanes had ahead of `s` is consumed now.
            self.journal_may_change(s);
            let fed: Vec<SinkId> = self.relay.sinks_of(s).collect();
            for k in fed {
                if !self.sinks[k].watched && self.relay.held_for(k) > 0 {
                    self.flush(k);
                }
                self.note_drops_of_sink(k);
            }
        }
        n
    }

    /// Moves bytes from `s` to its sinks without copying them through fifod:
    /// `splice` for one sink, `tee` into each then one `splice` to consume
    /// for several. A sink that is idle gets them directly; one that is
    /// behind (or full now) gets them in its lane's private pipe, from which
    /// `flush` splices them on when it can take them. Returns how many bytes
    /// were taken from the source, or `None` when the copying path must run
    /// instead (a route frames lines, a lane holds bytes in memory or cannot
    /// have a pipe, the source is empty or ended).
    pub(super) fn splice_source(&mut self, s: SourceId) -> Option<usize> {
        if self.sources[s].kind.is_logged() {
            return None;
        }
        let mut plan = if self.fd_store.enabled() {
            self.relay.zero_copy_lanes_skipping(s)?
        } else {
            self.relay.zero_copy_lanes(s)?
        };
        let moved = self.splice_lanes(s, &mut plan);
        if moved.is_none() {
            // Pipes given out for this transfer and not used go back.
            for &(l, _, _) in &plan {
                self.release_lane_pipe(l);
            }
        }
        moved
    }

    /// `splice_source` once the relay said which lanes may take bytes how.
    fn splice_lanes(
        &mut self,
        s: SourceId,
        plan: &mut [(LaneId, SinkId, Target)],
    ) -> Option<usize> {
        let quota = self.sources[s].quota.unwrap_or(usize::MAX);
        let budget = self.relay.read_budget(s, quota.min(SPLICE_CHUNK));
        if budget == 0 {
            return None;
        }
        let plan_len = plan.len();
        for (l, k, target) in plan.iter_mut() {
            let sink = &self.sinks[*k];
            if sink.intake != Intake::Open {
                return None;
            }
            // An output between sessions, or a process restarting: its
            // bytes wait in the lane. With a store, fanned-out bytes go
            // through pipes, where what each lane took can be measured.
            let fanned_out = self.fd_store.enabled() && plan_len > 1;
            if *target == Target::Sink && (sink.fd.is_none() || fanned_out) {
                *target = Target::Pipe;
            }
            if *target == Target::Pipe {
                self.lane_pipe(*l)?;
            }
        }
        // Out of its slot while lanes get pipes (which needs `&mut self`).
        let source = self.sources[s].fd.take()?;
        let journaled = self.fd_store.enabled() && plan.len() > 1;
        let moved = if journaled {
            self.splice_journaled(s, source.as_fd(), plan, budget)
        } else {
            self.splice_plan(source.as_fd(), plan, budget)
        };
        self.sources[s].fd = Some(source);
        let (took, consumed) = moved?;
        let lanes = plan.iter().map(|&(l, _, _)| l);
        self.relay.spliced(s, lanes, &took, consumed);
        if journaled {
            self.settle_journal(s);
        }
        for (&(l, k, target), t) in plan.iter().zip(&took) {
            // A lane that sat out counts what its pipe had ahead as piped now.
            if t.piped > 0 || target == Target::Skip {
                self.start_flush(k);
            } else {
                self.release_lane_pipe(l);
            }
            // A full lane dropped the newest bytes, or made room by
            // dropping its oldest.
            self.note_drops_of_sink(k);
        }
        // Bytes some lanes took and others did not are read and held for
        // the others (and skipped for the rest) by the copying path.
        (consumed > 0).then_some(consumed)
    }

    /// Carries out a zero-copy transfer from `source` to the lanes of
    /// `plan`, of up to `budget` bytes: what each lane took, and how many
    /// bytes were consumed from the source. `None` if nothing moved.
    fn splice_plan(
        &mut self,
        source: BorrowedFd<'_>,
        plan: &[(LaneId, SinkId, Target)],
        budget: usize,
    ) -> Option<(Vec<Took>, usize)> {
        if let [(l, k, target)] = plan[..] {
            if target == Target::Skip {
                return None;
            }
            let (took, consumed) = self.splice_one(source, l, k, target, budget)?;
            return Some((vec![took], consumed));
        }
        // tee needs to know how much there is: it cannot start a later copy
        // where an earlier one stopped.
        let n = self.relay.tee_len(plan, budget, pipe::queued_bytes(source));
        if n == 0 {
            return None;
        }
        let mut took = Vec::with_capacity(plan.len());
        let mut covered = n;
        for &(l, k, target) in plan {
            let (t, lane_covered) = self.tee_one(source, l, k, target, n);
            took.push(t);
            covered = covered.min(lane_covered);
        }
        let consumed = let_go(self.dev_null.as_ref(), &mut self.scratch, source, covered);
        Some((took, consumed))
    }

    /// One lane's splice of up to `len` bytes: into its sink, or into its
    /// pipe if the sink is full or behind; a full `drop-newest` lane lets
    /// the rest go. Returns what the lane took and how many bytes were
    /// consumed, or `None` if nothing moved.
    fn splice_one(
        &mut self,
        source: BorrowedFd<'_>,
        l: LaneId,
        k: SinkId,
        target: Target,
        len: usize,
    ) -> Option<(Took, usize)> {
        if target == Target::Sink {
            let sink = self.sinks[k].fd.as_ref()?.as_fd();
            // EAGAIN does not say which side was not ready, and 0 may be
            // an end: the copying path reads and tells them apart.
            match splice(source, None, sink, None, len, SPLICE_FLAGS) {
                Ok(n) if n > 0 => return Some((Took { sent: n, piped: 0 }, n)),
                Err(Errno::EAGAIN) if pipe::queued_bytes(source) > 0 => {}
                Err(Errno::EAGAIN) => {
                    self.splice_stop = Some(SpliceStop::SourceEmpty);
                    return None;
                }
                _ => return None,
            }
        }
        // The sink is full, or holds bytes already: the lane's pipe takes
        // them, as many as the lane has room for (the relay says how much,
        // a `drop-oldest` lane making room for what is there).
        let room = self
            .relay
            .room_for(l, || len.min(pipe::queued_bytes(source)));
        if !self.let_go_unwanted(k, l) {
            return None;
        }
        let piped = if room > 0 {
            let lane_pipe = self.lane_pipe(l)?;
            match splice(source, None, lane_pipe, None, len.min(room), SPLICE_FLAGS) {
                Ok(n) if n > 0 => n,
                // Its pages are full before its bytes reach `buffer` (the
                // source came in small pieces).
                Err(Errno::EAGAIN) if pipe::queued_bytes(source) > 0 => {
                    self.splice_stop = Some(SpliceStop::LanePipeFull(l));
                    return None;
                }
                _ => return None,
            }
        } else {
            0
        };
        // What the relay lets go for it (a full `drop-newest` lane's rest).
        let consumable = self.relay.consumable(l, piped, room, len);
        let dropped = let_go(
            self.dev_null.as_ref(),
            &mut self.scratch,
            source,
            consumable - piped,
        );
        let took = Took { sent: 0, piped };
        (took.total() + dropped > 0).then_some((took, piped + dropped))
    }

    /// One lane's `tee` of `n` bytes (all the source has) for fan-out: into
    /// its sink, and what the sink did not take into its pipe, as far as the
    /// lane has room. Returns what it took, and how many of the `n` bytes
    /// may be consumed for it: those it took, or all of them if it is a full
    /// `drop-newest` lane (it drops the rest).
    fn tee_one(
        &mut self,
        source: BorrowedFd<'_>,
        l: LaneId,
        k: SinkId,
        target: Target,
        n: usize,
    ) -> (Took, usize) {
        let tee = |to: BorrowedFd<'_>, len| {
            tee(source, to, len, SpliceFFlags::SPLICE_F_NONBLOCK).unwrap_or(0)
        };
        let sent = match (target, &self.sinks[k].fd) {
            (Target::Sink, Some(fd)) => tee(fd.as_fd(), n),
            _ => 0,
        };
        let want = n.min(sent + self.relay.room_for(l, || n - sent));
        let full = |relay: &Relay, taken: usize| relay.consumable(l, taken, want, n);
        if sent == want {
            return (Took { sent, piped: 0 }, full(&self.relay, sent));
        }
        // The pipe must hold nothing before the tee but what it keeps.
        if self.lane_pipe(l).is_none() || !self.let_go_unwanted(k, l) {
            return (Took { sent, piped: 0 }, sent);
        }
        let Some(lane_pipe) = self.lane_pipes.get(l) else {
            return (Took { sent, piped: 0 }, sent);
        };
        // tee copies from the source's front only: the pipe gets the bytes
        // the sink already has too, and lets them go at once.
        let teed = tee(lane_pipe.write.as_fd(), want);
        let again = teed.min(sent);
        let reader = lane_pipe.read.as_fd();
        if again > 0 && let_go(self.dev_null.as_ref(), &mut self.scratch, reader, again) != again {
            // What is left in it is not known: it goes, with its bytes.
            self.lane_pipe_failed(k, l);
            return (Took { sent, piped: 0 }, sent);
        }
        let took = Took {
            sent,
            piped: teed - again,
        };
        (took, full(&self.relay, took.total()))
    }

    /// Flushes `k` now if it is not already waiting to be writable.
    fn start_flush(&mut self, k: SinkId) {
        if !self.sinks[k].watched {
            self.flush(k);
        }
    }

    /// A source's session ended: its writers all left, its process closed
    /// stdout, or fifod's stdin reached EOF.
    pub(super) fn source_ended(&mut self, s: SourceId) {
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
            SourceKind::Detached { .. } => {
                info!("{}: its last writer left", self.sources[s].name);
                self.set_source_fd(s, None);
            }
            SourceKind::Stdin => {
                info!("stdin reached EOF");
                self.set_source_fd(s, None);
            }
        }
        debug!("{}: end of session", self.sources[s].name);
        // Its unfinished line, and on forwarding routes an end, are now
        // queued for its sinks.
        self.relay.source_ended(s);
        let fed: Vec<SinkId> = self.relay.sinks_of(s).collect();
        for k in fed {
            self.flush(k);
        }
    }

    /// Writes what `sink` holds until it is empty, the pipe is full, or an
    /// end must wait; delivers ends that are due.
    pub(super) fn flush(&mut self, k: SinkId) {
        loop {
            match self.sinks[k].intake {
                Intake::Open => {}
                Intake::Refusing => {
                    self.relay.discard(k);
                    self.close_lane_pipes_of(k);
                    break;
                }
                Intake::Closed => break,
            }
            if self.relay.end_due(k) {
                if !self.deliver_end(k) {
                    break;
                }
                self.relay.end_delivered(k);
                continue;
            }
            let Some((lane, out)) = self.relay.pending(k) else {
                break;
            };
            let piped = matches!(out, Out::Piped(_));
            if piped && self.relay.lanes()[lane].unwanted() > 0 {
                // Dropped bytes at the front of the pipe go first.
                self.let_go_unwanted(k, lane);
                continue;
            }
            let Some(fd) = &self.sinks[k].fd else {
                if self.reopen_sink(k) {
                    continue;
                }
                break;
            };
            let (result, len) = match out {
                Out::Bytes(bytes) => (nix::unistd::write(fd.as_fd(), bytes), bytes.len()),
                Out::Piped(len) => match self.lane_pipes.get(lane) {
                    Some(lane_pipe) => (
                        splice(&lane_pipe.read, None, fd, None, len, SPLICE_FLAGS),
                        len,
                    ),
                    None => (Ok(0), len),
                },
            };
            match result {
                // The relay counts bytes in a pipe that has none.
                Ok(0) if piped => self.lane_pipe_failed(k, lane),
                Ok(n) => {
                    self.relay.delivered(lane, n);
                    if piped {
                        self.release_lane_pipe(lane);
                    }
                    if n < len {
                        break;
                    }
                }
                // Not the sink: the pipe has none of the bytes counted.
                Err(Errno::EAGAIN) if piped && self.lane_pipe_is_empty(lane) => {
                    self.lane_pipe_failed(k, lane)
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(Errno::EPIPE) => self.sink_closed(k),
                Err(e) => {
                    let lost = self.relay.discard(k);
                    self.close_lane_pipes_of(k);
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
        let waiting =
            sink.fd.is_some() && sink.intake == Intake::Open && self.relay.pending(k).is_some();
        self.set_sink_watched(k, waiting);
        self.note_drops_of_sink(k);
        let feeding: Vec<SourceId> = self.relay.sources_feeding(k).collect();
        for s in feeding {
            if !self.line_logs.is_empty()
                && self.line_logs.contains_key(&self.sources[s].name)
                && !self.line_logs_due.contains(&s)
            {
                self.line_logs_due.push(s);
            }
            self.resume_if_room(s);
        }
    }

    /// The reader of a sink went away for good (EPIPE): a process closed its
    /// stdin, the consumer of fifod's stdout left, or, during the drain
    /// (when fifod no longer reads its own outputs), an output FIFO's last
    /// reader left.
    pub(super) fn sink_closed(&mut self, k: SinkId) {
        let name = &self.sinks[k].name;
        match self.sinks[k].kind {
            SinkKind::Stdin(c) if self.children[c].pid.is_some_and(child::is_exiting) => {
                // It died rather than closed its stdin: its exit, reaped
                // next, decides (bytes wait for the restart, or are dropped
                // if there will be none).
                debug!("process {name} is exiting: its stdin is gone");
                self.set_sink_fd(k, None);
                return;
            }
            SinkKind::Stdin(_) => warn!(
                "process {name} closed its stdin: what it did not take is dropped until it restarts"
            ),
            SinkKind::Stdout => {
                warn!("the reader of stdout went away: what is routed there is dropped")
            }
            SinkKind::Fifo(_) => {
                // Its fd stays, so that the report counts what is left in
                // the pipe.
                info!("fifo {name}: its reader left during the drain");
                self.set_sink_watched(k, false);
                self.sinks[k].intake = Intake::Closed;
                return;
            }
        }
        self.set_sink_fd(k, None);
        self.sinks[k].intake = Intake::Refusing;
    }

    /// Gives `sink` the end of a session. Returns false when it must wait.
    pub(super) fn deliver_end(&mut self, k: SinkId) -> bool {
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
                self.sinks[k].intake = Intake::Refusing;
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
                    self.ending.insert(k);
                    return false;
                }
                self.sinks[k].end_check = None;
                self.ending.remove(&k);
                match self.footprint.fifos[fifo].reopen(Access::Read) {
                    Ok(keep_alive) => {
                        self.sinks[k].keep_alive = Some(keep_alive);
                        self.set_sink_fd(k, None);
                        // The store's copy must not be a writer either.
                        self.store_fifo(fifo);
                        debug!("fifo {}: end of session delivered", self.sinks[k].name);
                        true
                    }
                    Err(e) => {
                        error!(
                            "fifo {}: {e}; its bytes are dropped from now on",
                            self.sinks[k].name
                        );
                        self.set_sink_fd(k, None);
                        self.sinks[k].intake = Intake::Refusing;
                        true
                    }
                }
            }
        }
    }

    /// Opens an output FIFO's write side again for a new session. A process
    /// that is down has no stdin: its bytes wait for the restart.
    pub(super) fn reopen_sink(&mut self, k: SinkId) -> bool {
        let SinkKind::Fifo(fifo) = self.sinks[k].kind else {
            return false;
        };
        match self.footprint.fifos[fifo].reopen(Access::ReadWrite) {
            Ok(fd) => {
                self.sinks[k].fd = Some(fd);
                self.sinks[k].keep_alive = None;
                self.store_fifo(fifo);
                true
            }
            Err(e) => {
                error!(
                    "fifo {}: {e}; its bytes are dropped from now on",
                    self.sinks[k].name
                );
                self.sinks[k].intake = Intake::Refusing;
                false
            }
        }
    }

    pub(super) fn log_lines(&mut self, s: SourceId, n: usize) {
        let source = &mut self.sources[s];
        source.partial.extend_from_slice(&self.scratch[..n]);
        // Every whole line is logged, then removed in one go.
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', &source.partial) {
            warn!(
                "{}: {}",
                source.name,
                String::from_utf8_lossy(&source.partial[start..end])
            );
            start = end + 1;
        }
        source.partial.drain(..start);
        if source.partial.len() > MAX_LOG_LINE {
            self.flush_log_line(s);
        }
    }

    pub(super) fn flush_log_line(&mut self, s: SourceId) {
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
}
