//! The relay engine's state: which source feeds which sink, the bytes held
//! for each sink, line framing, the full-buffer policies and the accounting.
//!
//! **Invariant:** this module makes no system call. The daemon reads, writes
//! and polls; the relay decides how much may be read, what to write next and
//! what to drop, so that all of it can be tested here without a single fd.
//!
//! A *lane* is one (route, sink) pair: each has its own buffer, bounded by the
//! route's `buffer`, and its own counters. For every lane, at all times,
//! `accepted = delivered + held + dropped`, in bytes and (on line routes) in
//! lines, a line being counted by its newline.
//!
//! On a route with line framing, each source's bytes are cut into lines
//! before they reach the lanes: a lane only ever holds whole lines (or pieces
//! of `max_line` bytes of a longer one), a policy only ever drops whole
//! lines, and once a line is partly written to a sink, no other lane writes to
//! that sink before the line is complete.
//!
//! On a byte route, a lane's held bytes may live in a private pipe of the
//! daemon's instead of fifod's memory: the daemon moves them with
//! `splice`/`tee` and tells the relay how many it moved. Those bytes always
//! come first: a lane holds `piped` bytes in its pipe, then its bytes in
//! memory, so bytes that had to be copied (a reload, a source that cannot be
//! spliced) never overtake them, and bytes are only spliced into the pipe
//! while nothing of the lane is in memory. What `drop-oldest` drops from the
//! pipe is counted at once and stays there, *unwanted*, until the daemon
//! lets it go.
//!
//! On routes with `eof = "forward"`, a lane also holds *end markers*: when
//! every source of the route has ended its session, each lane gets a marker
//! after its last byte. A sink is given its end once every lane feeding it
//! has reached a marker, and not a byte of the next session before that.

use std::collections::VecDeque;

use crate::config::WhenFull;

/// An empty lane keeps at most this much memory.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Indexes into the daemon's tables of sources and sinks.
pub type SourceId = usize;
pub type SinkId = usize;
pub type LaneId = usize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneStats {
    /// Bytes the route's sources produced for this sink.
    pub accepted: u64,
    /// Bytes written into the sink.
    pub delivered: u64,
    /// Bytes discarded by the route's `when_full` policy.
    pub dropped: u64,
    /// The same, in lines (line routes only).
    pub lines_accepted: u64,
    pub lines_delivered: u64,
    pub lines_dropped: u64,
}

fn newlines(bytes: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', bytes).count() as u64
}

#[derive(Debug)]
pub struct Lane {
    pub route: usize,
    pub sink: SinkId,
    /// Bytes held in the daemon's private pipe for this lane, before `held`.
    piped: usize,
    /// Bytes in front of those in the pipe that were dropped (counted) and
    /// that the daemon lets go of before it reads the pipe.
    unwanted: usize,
    held: VecDeque<u8>,
    /// Stream offset of the first held byte: bytes ever removed from the front.
    front: u64,
    /// Stream offsets at which a session ends, oldest first.
    ends: VecDeque<u64>,
    capacity: usize,
    policy: WhenFull,
    /// Line framing: only whole lines are dropped, and a line in progress
    /// keeps its sink.
    lines: bool,
    /// The first held line has been partly written.
    mid_line: bool,
    /// Bytes of the source's coming stream that `tee` already put into the
    /// sink (`ahead_sent`) and, after those, into the lane's pipe
    /// (`ahead_piped`): when they are consumed from the source, this lane
    /// skips them, counting them as delivered and as piped.
    ahead_sent: usize,
    ahead_piped: usize,
    /// The source those bytes are ahead of (one at a time: a source is
    /// not spliced while any lane it feeds is ahead).
    ahead_from: SourceId,
    stats: LaneStats,
}

/// The next bytes for a sink: in fifod's memory, or in the lane's pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out<'a> {
    Bytes(&'a [u8]),
    Piped(usize),
}

/// Where a zero-copy transfer puts a lane's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Straight into the sink: the lane and every lane of its sink are idle.
    Sink,
    /// Into the lane's pipe, behind what it holds there.
    Pipe,
}

/// How many of a source's coming bytes a zero-copy transfer gave one lane:
/// the first `sent` went into the sink, the next `piped` into the lane's pipe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Took {
    pub sent: usize,
    pub piped: usize,
}

impl Took {
    pub fn total(self) -> usize {
        self.sent + self.piped
    }
}

impl Lane {
    pub fn held(&self) -> usize {
        self.piped + self.held.len()
    }

    /// Bytes in the lane's pipe, counted as held or not yet consumed from
    /// the source: the pipe may be let go of when this is 0.
    pub fn in_pipe(&self) -> usize {
        self.unwanted + self.piped + self.ahead_piped
    }

    /// Bytes at the front of the lane's pipe that were dropped: the pipe
    /// must let them go before it is read.
    pub fn unwanted(&self) -> usize {
        self.unwanted
    }

    pub fn stats(&self) -> LaneStats {
        self.stats
    }

    /// The route's `buffer`: the most this lane holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn policy(&self) -> WhenFull {
        self.policy
    }

    pub fn lines(&self) -> bool {
        self.lines
    }

    /// Lines held, counted by their newline.
    pub fn held_lines(&self) -> u64 {
        let s = &self.stats;
        s.lines_accepted - s.lines_delivered - s.lines_dropped
    }

    /// Room left: bytes piped ahead of a source take room too, as they
    /// are in the pipe already.
    fn free(&self) -> usize {
        self.capacity.saturating_sub(self.held() + self.ahead_piped)
    }

    /// Room left for bytes from `source`: those it is ahead of need none.
    fn free_for(&self, source: SourceId) -> usize {
        let own = if self.ahead_from == source {
            self.ahead_piped
        } else {
            0
        };
        self.free() + own
    }

    /// Nothing to write and no end to deliver.
    fn is_idle(&self) -> bool {
        self.held() == 0 && self.ends.is_empty()
    }

    fn ahead(&self) -> usize {
        self.ahead_sent + self.ahead_piped
    }

    /// The next end marker has been reached: no byte may go before it is given.
    fn at_end(&self) -> bool {
        self.ends.front().is_some_and(|&end| end <= self.front)
    }

    /// Bytes that may be written now: the piped ones first, up to the next
    /// end marker.
    fn writable(&self) -> Option<Out<'_>> {
        let before_end = match self.ends.front() {
            Some(&end) => usize::try_from(end.saturating_sub(self.front)).unwrap_or(usize::MAX),
            None => usize::MAX,
        };
        if self.piped > 0 {
            let n = self.piped.min(before_end);
            return (n > 0).then_some(Out::Piped(n));
        }
        let first = self.held.as_slices().0;
        let bytes = &first[..first.len().min(before_end)];
        (!bytes.is_empty()).then_some(Out::Bytes(bytes))
    }

    fn remove_front(&mut self, n: usize) {
        self.held.drain(..n);
        self.front += n as u64;
        // A burst can grow a lane to its whole buffer; give the memory back
        // once it is delivered rather than keep every lane at its peak.
        if self.held.is_empty() && self.held.capacity() > KEEP_CAPACITY {
            self.held = VecDeque::new();
        }
    }

    /// Counts `n` bytes that were held `at` bytes after the front, and are
    /// gone, as dropped; end markers after them move back.
    fn forget(&mut self, at: usize, n: usize) {
        if n == 0 {
            return;
        }
        self.stats.dropped += n as u64;
        let start = self.front + at as u64;
        for end in &mut self.ends {
            if *end > start {
                *end = (*end).saturating_sub(n as u64).max(start);
            }
        }
    }

    /// Drops `n` bytes held in memory starting `at` bytes after the front,
    /// keeping the end markers after the bytes they followed. Only called
    /// where the lane has no piped bytes: line lanes never pipe, and
    /// `drop_front` and `discard` take the piped ones first.
    fn drop_held(&mut self, at: usize, n: usize) {
        if n == 0 {
            return;
        }
        debug_assert_eq!(self.piped, 0, "a lane with piped bytes never drops");
        if self.lines {
            let lines = self.held.range(at..at + n).filter(|&&b| b == b'\n').count();
            self.stats.lines_dropped += lines as u64;
        }
        self.stats.dropped += n as u64;
        if at == 0 {
            self.remove_front(n);
            return;
        }
        self.held.drain(at..at + n);
        let start = self.front + at as u64;
        for end in &mut self.ends {
            if *end > start {
                *end = (*end).saturating_sub(n as u64).max(start);
            }
        }
    }

    /// Counts bytes that were never held as dropped.
    fn drop_unheld(&mut self, bytes: &[u8]) {
        self.stats.dropped += bytes.len() as u64;
        if self.lines {
            self.stats.lines_dropped += newlines(bytes);
        }
    }

    /// Where whole lines (or whole pieces) end in `bytes`, at or before `limit`.
    fn whole_prefix(bytes: &[u8], limit: usize) -> usize {
        if bytes.len() <= limit {
            return bytes.len();
        }
        memchr::memrchr(b'\n', &bytes[..limit]).map_or(0, |i| i + 1)
    }

    /// Takes `data` after `direct` bytes of it were already written straight
    /// to the sink; holds the rest as far as the policy allows.
    fn accept(&mut self, data: &[u8], direct: usize) {
        self.stats.accepted += data.len() as u64;
        self.stats.delivered += direct as u64;
        if self.lines {
            self.stats.lines_accepted += newlines(data);
            self.stats.lines_delivered += newlines(&data[..direct]);
            // A direct write only happens into an idle lane.
            if direct > 0 && direct < data.len() && data[direct - 1] != b'\n' {
                self.mid_line = true;
            }
        }
        let rest = &data[direct..];
        let free = self.free();
        if rest.len() <= free {
            self.held.extend(rest);
            return;
        }
        // What must stay: the rest of a line already partly written.
        let protected = if self.lines && self.mid_line && self.held.is_empty() {
            memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1)
        } else {
            0
        };
        match self.policy {
            // The caller never reads more than the free space of a blocking
            // lane; holding the excess anyway keeps every byte.
            WhenFull::Block => self.held.extend(rest),
            WhenFull::DropNewest if !self.lines => {
                self.held.extend(&rest[..free]);
                self.drop_unheld(&rest[free..]);
            }
            WhenFull::DropNewest => {
                let keep = protected.max(Self::whole_prefix(rest, free));
                self.held.extend(&rest[..keep]);
                self.drop_unheld(&rest[keep..]);
            }
            WhenFull::DropOldest => {
                self.held.extend(rest);
                self.trim_oldest();
            }
        }
    }

    /// Drops the `n` oldest held bytes of a byte lane: those in its pipe
    /// first (the daemon lets them go), then those in memory.
    fn drop_front(&mut self, n: usize) {
        let from_pipe = n.min(self.piped);
        self.piped -= from_pipe;
        self.unwanted += from_pipe;
        self.front += from_pipe as u64;
        self.stats.dropped += from_pipe as u64;
        self.drop_held(0, n - from_pipe);
    }

    /// Drops the oldest held bytes (whole lines on a line route, and never
    /// a line already partly written) until the lane fits its capacity.
    fn trim_oldest(&mut self) {
        let excess = (self.held() + self.ahead_piped)
            .saturating_sub(self.capacity)
            .min(self.held());
        if excess == 0 {
            return;
        }
        if !self.lines {
            self.drop_front(excess);
            return;
        }
        let (first, second) = self.held.as_slices();
        let line_end = |from: usize| -> Option<usize> {
            if from < first.len() {
                if let Some(i) = memchr::memchr(b'\n', &first[from..]) {
                    return Some(from + i + 1);
                }
                memchr::memchr(b'\n', second).map(|i| first.len() + i + 1)
            } else {
                memchr::memchr(b'\n', &second[from - first.len()..]).map(|i| from + i + 1)
            }
        };
        let keep_from = if self.mid_line {
            line_end(0).unwrap_or(self.held.len())
        } else {
            0
        };
        let mut cut = keep_from;
        while cut - keep_from < excess {
            match line_end(cut) {
                Some(end) => cut = end,
                // No newline left: what remains is a piece of a long line.
                None => {
                    cut = (keep_from + excess).min(self.held.len());
                    break;
                }
            }
        }
        self.drop_held(keep_from, cut - keep_from);
    }
}

/// One route as the relay needs it.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub sources: Vec<SourceId>,
    pub sinks: Vec<SinkId>,
    pub buffer: usize,
    pub when_full: WhenFull,
    /// Pass the end of the sources' sessions on to the sinks.
    pub forward_eof: bool,
    /// Line framing, with the longest line passed on whole.
    pub max_line: Option<usize>,
}

#[derive(Debug)]
struct RouteState {
    sources: Vec<SourceId>,
    lanes: Vec<LaneId>,
    forward_eof: bool,
    max_line: Option<usize>,
    /// Which sources have ended their current session.
    ended: Vec<bool>,
    /// Line routes: each source's line in progress.
    partial: Vec<Vec<u8>>,
    /// Line routes: the line in progress already went on in pieces.
    in_long_line: Vec<bool>,
    /// Lines longer than `max_line`, passed on in pieces.
    long_lines: u64,
}

/// How the endpoints and routes of a running relay map onto a new one:
/// for each old index, the same thing in the new config, if it is there.
#[derive(Debug)]
pub struct RelayMap<'a> {
    pub routes: &'a [Option<usize>],
    pub sources: &'a [Option<SourceId>],
    pub sinks: &'a [Option<SinkId>],
}

#[derive(Debug)]
pub struct Relay {
    lanes: Vec<Lane>,
    routes: Vec<RouteState>,
    /// For each source, the routes it feeds and its place among their sources.
    source_routes: Vec<Vec<(usize, usize)>>,
    /// For each sink, the lanes that feed it.
    sink_lanes: Vec<Vec<LaneId>>,
    /// Round-robin position among a sink's lanes, so no route starves another.
    sink_turn: Vec<usize>,
    /// A lane that has a line partly written to the sink has it to itself.
    sink_owner: Vec<Option<LaneId>>,
}

impl Relay {
    pub fn new(routes: &[RouteSpec], sources: usize, sinks: usize) -> Relay {
        let mut relay = Relay {
            lanes: Vec::new(),
            routes: Vec::new(),
            source_routes: vec![Vec::new(); sources],
            sink_lanes: vec![Vec::new(); sinks],
            sink_turn: vec![0; sinks],
            sink_owner: vec![None; sinks],
        };
        for (route_index, route) in routes.iter().enumerate() {
            let mut lanes = Vec::new();
            for &sink in &route.sinks {
                let lane = relay.lanes.len();
                lanes.push(lane);
                relay.sink_lanes[sink].push(lane);
                relay.lanes.push(Lane {
                    route: route_index,
                    sink,
                    piped: 0,
                    unwanted: 0,
                    held: VecDeque::new(),
                    front: 0,
                    ends: VecDeque::new(),
                    capacity: route.buffer,
                    policy: route.when_full,
                    lines: route.max_line.is_some(),
                    mid_line: false,
                    ahead_sent: 0,
                    ahead_piped: 0,
                    ahead_from: 0,
                    stats: LaneStats::default(),
                });
            }
            for (position, &source) in route.sources.iter().enumerate() {
                relay.source_routes[source].push((route_index, position));
            }
            relay.routes.push(RouteState {
                sources: route.sources.clone(),
                lanes,
                forward_eof: route.forward_eof,
                max_line: route.max_line,
                ended: vec![false; route.sources.len()],
                partial: vec![Vec::new(); route.sources.len()],
                in_long_line: vec![false; route.sources.len()],
                long_lines: 0,
            });
        }
        relay
    }

    pub fn lanes(&self) -> &[Lane] {
        &self.lanes
    }

    /// Lines longer than `max_line` that route `route` passed on in pieces.
    pub fn long_lines(&self, route: usize) -> u64 {
        self.routes[route].long_lines
    }

    /// Bytes of incomplete lines waiting in route `route`'s sources.
    pub fn partial_bytes(&self, route: usize) -> usize {
        self.routes[route].partial.iter().map(Vec::len).sum()
    }

    /// How many bytes may be read from `source` now: the least free space
    /// among the blocking lanes it feeds (less the line it has in progress
    /// there), or `max` if none of them blocks.
    pub fn read_budget(&self, source: SourceId, max: usize) -> usize {
        let mut budget = max;
        for &(r, position) in &self.source_routes[source] {
            let route = &self.routes[r];
            let in_progress = route.partial[position].len();
            for &l in &route.lanes {
                let lane = &self.lanes[l];
                if lane.policy == WhenFull::Block {
                    budget = budget.min(lane.free_for(source).saturating_sub(in_progress));
                }
            }
        }
        budget
    }

    /// Hands bytes read from `source` to every route it feeds. Where a lane
    /// holds nothing and its sink has nothing else pending, `write_now` is
    /// offered the bytes first and returns how many it wrote, which saves a
    /// copy into the lane.
    pub fn ingest(
        &mut self,
        source: SourceId,
        data: &[u8],
        mut write_now: impl FnMut(SinkId, &[u8]) -> usize,
    ) {
        for i in 0..self.source_routes[source].len() {
            let (r, position) = self.source_routes[source][i];
            self.routes[r].ended[position] = false;
            let Some(max_line) = self.routes[r].max_line else {
                self.push(r, source, data, &mut write_now);
                continue;
            };
            let complete = memchr::memrchr(b'\n', data).map_or(0, |i| i + 1);
            if complete > 0 {
                let counted = std::mem::take(&mut self.routes[r].in_long_line[position]);
                if self.routes[r].partial[position].is_empty() {
                    self.push_lines(
                        r,
                        source,
                        &data[..complete],
                        max_line,
                        counted,
                        &mut write_now,
                    );
                } else {
                    let mut lines = std::mem::take(&mut self.routes[r].partial[position]);
                    lines.extend_from_slice(&data[..complete]);
                    self.push_lines(r, source, &lines, max_line, counted, &mut write_now);
                    lines.clear();
                    self.routes[r].partial[position] = lines;
                }
            }
            self.routes[r].partial[position].extend_from_slice(&data[complete..]);
            // A line that outgrows max_line goes on in pieces, without waiting.
            while self.routes[r].partial[position].len() >= max_line {
                let piece: Vec<u8> = self.routes[r].partial[position].drain(..max_line).collect();
                if !std::mem::replace(&mut self.routes[r].in_long_line[position], true) {
                    self.routes[r].long_lines += 1;
                }
                self.push(r, source, &piece, &mut write_now);
            }
        }
    }

    /// Pushes whole lines, cutting those longer than `max_line` into pieces.
    /// `first_counted`: the first line already went on in pieces.
    fn push_lines(
        &mut self,
        r: usize,
        source: SourceId,
        lines: &[u8],
        max_line: usize,
        mut first_counted: bool,
        write_now: &mut impl FnMut(SinkId, &[u8]) -> usize,
    ) {
        let mut run_start = 0;
        let mut line_start = 0;
        for newline in memchr::memchr_iter(b'\n', lines) {
            let end = newline + 1;
            if end - line_start > max_line {
                if run_start < line_start {
                    self.push(r, source, &lines[run_start..line_start], write_now);
                }
                if !first_counted {
                    self.routes[r].long_lines += 1;
                }
                let mut piece = line_start;
                while end - piece > max_line {
                    self.push(r, source, &lines[piece..piece + max_line], write_now);
                    piece += max_line;
                }
                self.push(r, source, &lines[piece..end], write_now);
                run_start = end;
            }
            line_start = end;
            first_counted = false;
        }
        if run_start < lines.len() {
            self.push(r, source, &lines[run_start..], write_now);
        }
    }

    /// Gives whole records from `source` to every lane of route `r`.
    fn push(
        &mut self,
        r: usize,
        source: SourceId,
        data: &[u8],
        write_now: &mut impl FnMut(SinkId, &[u8]) -> usize,
    ) {
        for i in 0..self.routes[r].lanes.len() {
            let lane_id = self.routes[r].lanes[i];
            let lane = &mut self.lanes[lane_id];
            // What `tee` already delivered or piped from this source is not
            // given again (bytes of the route's other sources are new).
            let (sent, piped) = if lane.ahead_from == source {
                let sent = lane.ahead_sent.min(data.len());
                (sent, lane.ahead_piped.min(data.len() - sent))
            } else {
                (0, 0)
            };
            lane.ahead_sent -= sent;
            lane.ahead_piped -= piped;
            lane.piped += piped;
            lane.stats.accepted += (sent + piped) as u64;
            lane.stats.delivered += sent as u64;
            let data = &data[sent + piped..];
            if data.is_empty() {
                continue;
            }
            let sink = lane.sink;
            let sink_idle = self.sink_owner[sink].is_none()
                && self.sink_lanes[sink]
                    .iter()
                    .all(|&l| self.lanes[l].is_idle());
            let direct = if sink_idle {
                write_now(sink, data).min(data.len())
            } else {
                0
            };
            let lane = &mut self.lanes[lane_id];
            lane.accept(data, direct);
            if lane.lines && lane.mid_line {
                self.sink_owner[sink] = Some(lane_id);
            }
        }
    }

    /// The lanes `source` feeds and where each may take its bytes without
    /// them passing through fifod (`splice`/`tee`), if every lane can: byte
    /// routes only, none ahead of the source, and each lane either idle with
    /// an idle sink (`Target::Sink`) or allowed a pipe with nothing of its
    /// own in memory (`Target::Pipe`).
    pub fn zero_copy_lanes(&self, source: SourceId) -> Option<Vec<(LaneId, SinkId, Target)>> {
        let mut lanes = Vec::new();
        for &(r, _) in &self.source_routes[source] {
            let route = &self.routes[r];
            if route.max_line.is_some() {
                return None;
            }
            for &l in &route.lanes {
                let lane = &self.lanes[l];
                if lane.ahead() > 0 {
                    return None;
                }
                let sink_idle = self.sink_owner[lane.sink].is_none()
                    && self.sink_lanes[lane.sink]
                        .iter()
                        .all(|&o| self.lanes[o].is_idle());
                let target = if sink_idle {
                    Target::Sink
                } else if !lane.lines && lane.held.is_empty() {
                    Target::Pipe
                } else {
                    return None;
                };
                lanes.push((l, lane.sink, target));
            }
        }
        (!lanes.is_empty()).then_some(lanes)
    }

    /// How many more bytes `lane` may hold.
    pub fn room(&self, lane: LaneId) -> usize {
        self.lanes[lane].free()
    }

    /// Makes room for `n` more bytes in a `drop-oldest` lane (at most its
    /// buffer) by dropping its oldest; returns how many it dropped.
    pub fn make_room(&mut self, lane: LaneId, n: usize) -> usize {
        let lane = &mut self.lanes[lane];
        let excess = n
            .min(lane.capacity)
            .saturating_sub(lane.free())
            .min(lane.held());
        lane.drop_front(excess);
        excess
    }

    /// Records that the daemon let go of `n` unwanted bytes of `lane`'s pipe.
    pub fn let_go(&mut self, lane: LaneId, n: usize) {
        let lane = &mut self.lanes[lane];
        lane.unwanted -= n.min(lane.unwanted);
    }

    /// Whether `lane` may hold bytes in a pipe now, behind what it holds
    /// (byte lanes only: a line lane's bytes are looked at).
    pub fn may_pipe(&self, lane: LaneId) -> bool {
        let lane = &self.lanes[lane];
        !lane.lines && lane.held.is_empty() && lane.ahead() == 0
    }

    /// Records a zero-copy transfer: `took[i]` says where the coming bytes
    /// of the source went for `lanes[i]`, and `consumed` bytes were taken
    /// from the source. A lane that took more than was consumed is ahead of
    /// the source by the difference; one that took less drops the rest,
    /// which only a full `drop-newest` lane may (the caller consumes no more
    /// than every other lane took).
    pub fn spliced(
        &mut self,
        source: SourceId,
        lanes: impl IntoIterator<Item = LaneId>,
        took: &[Took],
        consumed: usize,
    ) {
        for (l, &t) in lanes.into_iter().zip(took) {
            let lane = &mut self.lanes[l];
            let sent = t.sent.min(consumed);
            let piped = t.piped.min(consumed - sent);
            let dropped = consumed - sent - piped;
            debug_assert!(
                dropped == 0 || lane.policy == WhenFull::DropNewest,
                "a lane that may not drop took less than was consumed"
            );
            lane.stats.accepted += consumed as u64;
            lane.stats.delivered += sent as u64;
            lane.stats.dropped += dropped as u64;
            lane.piped += piped;
            lane.ahead_sent = t.sent - sent;
            lane.ahead_piped = t.piped - piped;
            lane.ahead_from = source;
        }
        for i in 0..self.source_routes[source].len() {
            let (r, position) = self.source_routes[source][i];
            self.routes[r].ended[position] = false;
        }
    }

    /// Whether every blocking lane `source` feeds is empty.
    pub fn blocking_lanes_empty(&self, source: SourceId) -> bool {
        self.source_routes[source].iter().all(|&(r, _)| {
            self.routes[r].lanes.iter().all(|&l| {
                let lane = &self.lanes[l];
                lane.policy != WhenFull::Block || lane.held() == 0
            })
        })
    }

    /// Whether `source` has a line in progress on some route.
    pub fn has_partial_lines(&self, source: SourceId) -> bool {
        self.source_routes[source]
            .iter()
            .any(|&(r, position)| !self.routes[r].partial[position].is_empty())
    }

    /// Passes on `source`'s lines in progress as they are, without a newline.
    pub fn flush_lines_of(&mut self, source: SourceId) {
        for i in 0..self.source_routes[source].len() {
            let (r, position) = self.source_routes[source][i];
            self.flush_partial(r, position);
        }
    }

    fn flush_partial(&mut self, r: usize, position: usize) {
        self.routes[r].in_long_line[position] = false;
        let piece = std::mem::take(&mut self.routes[r].partial[position]);
        if !piece.is_empty() {
            let source = self.routes[r].sources[position];
            self.push(r, source, &piece, &mut |_, _| 0);
        }
    }

    /// The next bytes to write to `sink`, and the lane they come from.
    pub fn pending(&self, sink: SinkId) -> Option<(LaneId, Out<'_>)> {
        if let Some(owner) = self.sink_owner[sink] {
            return self.lanes[owner].writable().map(|out| (owner, out));
        }
        let lanes = &self.sink_lanes[sink];
        let n = lanes.len();
        (0..n)
            .map(|k| lanes[(self.sink_turn[sink] + k) % n])
            .find_map(|l| self.lanes[l].writable().map(|out| (l, out)))
    }

    /// Records that `n` bytes from the front of `lane` were written: its
    /// piped bytes first, as `pending` offers them.
    pub fn delivered(&mut self, lane: LaneId, n: usize) {
        let lane_ref = &mut self.lanes[lane];
        if lane_ref.piped > 0 {
            let n = n.min(lane_ref.piped);
            lane_ref.piped -= n;
            lane_ref.front += n as u64;
            lane_ref.stats.delivered += n as u64;
            let sink = lane_ref.sink;
            let turn = &mut self.sink_turn[sink];
            *turn = (*turn + 1) % self.sink_lanes[sink].len().max(1);
            return;
        }
        let n = n.min(lane_ref.held.len());
        if n == 0 {
            return;
        }
        if lane_ref.lines {
            let (first, second) = lane_ref.held.as_slices();
            let written = if n <= first.len() {
                newlines(&first[..n])
            } else {
                newlines(first) + newlines(&second[..n - first.len()])
            };
            lane_ref.stats.lines_delivered += written;
            let last = lane_ref.held[n - 1];
            lane_ref.remove_front(n);
            lane_ref.mid_line = last != b'\n' && !lane_ref.held.is_empty();
        } else {
            lane_ref.remove_front(n);
        }
        lane_ref.stats.delivered += n as u64;
        let sink = lane_ref.sink;
        self.sink_owner[sink] = lane_ref.mid_line.then_some(lane);
        let turn = &mut self.sink_turn[sink];
        *turn = (*turn + 1) % self.sink_lanes[sink].len().max(1);
    }

    /// Counts everything `sink` still holds as dropped (it cannot take bytes)
    /// and returns how many bytes that was. Its ends are dropped with them.
    pub fn discard(&mut self, sink: SinkId) -> usize {
        let mut total = 0;
        for &l in &self.sink_lanes[sink] {
            let lane = &mut self.lanes[l];
            let piped = std::mem::take(&mut lane.piped);
            lane.front += piped as u64;
            lane.stats.dropped += piped as u64;
            let n = lane.held.len();
            total += piped + n;
            lane.drop_held(0, n);
            lane.ends.clear();
            lane.mid_line = false;
        }
        self.sink_owner[sink] = None;
        total
    }

    /// Records that `source` ended its session: its line in progress is
    /// passed on as it is. On each route that forwards ends and whose every
    /// source has now ended, every lane gets an end marker after its last
    /// byte. Returns whether any marker was added.
    pub fn source_ended(&mut self, source: SourceId) -> bool {
        let mut marked = false;
        for i in 0..self.source_routes[source].len() {
            let (r, position) = self.source_routes[source][i];
            self.flush_partial(r, position);
            let route = &mut self.routes[r];
            route.ended[position] = true;
            if route.forward_eof && route.ended.iter().all(|&e| e) {
                route.ended.iter_mut().for_each(|e| *e = false);
                for &l in &route.lanes {
                    let lane = &mut self.lanes[l];
                    let end = lane.front + lane.held() as u64;
                    if lane.ends.back() != Some(&end) {
                        lane.ends.push_back(end);
                    }
                }
                marked = true;
            }
        }
        marked
    }

    /// Whether `sink` is due its end: every lane feeding it has reached an
    /// end marker. A sink fed by a route that holds ends is never due one.
    pub fn end_due(&self, sink: SinkId) -> bool {
        let lanes = &self.sink_lanes[sink];
        !lanes.is_empty() && lanes.iter().all(|&l| self.lanes[l].at_end())
    }

    /// Records that `sink` was given its end.
    pub fn end_delivered(&mut self, sink: SinkId) {
        for &l in &self.sink_lanes[sink] {
            self.lanes[l].ends.pop_front();
        }
    }

    /// Whether `sink` has an end marker still to reach.
    pub fn end_pending(&self, sink: SinkId) -> bool {
        self.sink_lanes[sink]
            .iter()
            .any(|&l| !self.lanes[l].ends.is_empty())
    }

    /// Bytes held for `sink` across its lanes.
    pub fn held_for(&self, sink: SinkId) -> usize {
        self.sink_lanes[sink]
            .iter()
            .map(|&l| self.lanes[l].held())
            .sum()
    }

    pub fn held_total(&self) -> usize {
        self.lanes.iter().map(Lane::held).sum()
    }

    /// The sources whose reading depends on `sink`'s lanes having room.
    pub fn sources_feeding(&self, sink: SinkId) -> impl Iterator<Item = SourceId> + '_ {
        self.sink_lanes[sink]
            .iter()
            .flat_map(|&l| self.routes[self.lanes[l].route].sources.iter().copied())
    }

    /// The lanes feeding `sink`.
    pub fn lanes_of_sink(&self, sink: SinkId) -> &[LaneId] {
        &self.sink_lanes[sink]
    }

    /// The most bytes a `tee` put into one of `source`'s sinks or lane
    /// pipes ahead of consuming them from the source.
    pub fn ahead_of(&self, source: SourceId) -> usize {
        self.source_routes[source]
            .iter()
            .flat_map(|&(r, _)| self.routes[r].lanes.iter())
            .map(|&l| &self.lanes[l])
            .filter(|lane| lane.ahead_from == source)
            .map(Lane::ahead)
            .max()
            .unwrap_or(0)
    }

    /// Counts what lanes got ahead of `source` as taken from it: its stream
    /// will not be read for them (it was replaced or closed, or someone else
    /// read those bytes), but they reached the sink or the lane's pipe.
    pub fn commit_ahead(&mut self, source: SourceId) {
        for i in 0..self.source_routes[source].len() {
            let (r, _) = self.source_routes[source][i];
            for &l in &self.routes[r].lanes {
                let lane = &mut self.lanes[l];
                if lane.ahead_from != source {
                    continue;
                }
                let (sent, piped) = (lane.ahead_sent, lane.ahead_piped);
                lane.stats.accepted += (sent + piped) as u64;
                lane.stats.delivered += sent as u64;
                lane.piped += piped;
                lane.ahead_sent = 0;
                lane.ahead_piped = 0;
            }
        }
    }

    /// Records that the bytes `lane` held in its pipe were read out of it
    /// (`bytes`, at most `in_pipe`): the piped ones are held in memory now,
    /// first in line, and bytes the pipe did not give back are counted as
    /// dropped.
    pub fn unpiped(&mut self, lane: LaneId, bytes: &[u8]) {
        let lane = &mut self.lanes[lane];
        // Bytes piped ahead of the source (it could not be settled) go with
        // the pipe: the source still has them, and they come again.
        lane.ahead_piped = 0;
        let bytes = &bytes[bytes.len().min(std::mem::take(&mut lane.unwanted))..];
        let n = bytes.len().min(lane.piped);
        let lost = lane.piped - n;
        lane.piped = 0;
        for &b in bytes[..n].iter().rev() {
            lane.held.push_front(b);
        }
        lane.forget(n, lost);
    }

    /// Records that `lane`'s pipe went away with what it held: those bytes
    /// are counted as dropped, and returned. Bytes it held ahead of the
    /// source are still in the source and come again.
    pub fn pipe_lost(&mut self, lane: LaneId) -> usize {
        let lane = &mut self.lanes[lane];
        lane.ahead_piped = 0;
        lane.unwanted = 0;
        let lost = std::mem::take(&mut lane.piped);
        lane.forget(0, lost);
        lost
    }

    /// Takes back bytes that were written into `sink` but never read (its
    /// FIFO was replaced and they were read back out of the old pipe): they
    /// are held again, first in line, and no longer count as delivered.
    pub fn give_back(&mut self, sink: SinkId, bytes: &[u8]) {
        let Some(lane) = self.sink_owner[sink].or_else(|| {
            self.sink_lanes[sink]
                .iter()
                .copied()
                .max_by_key(|&l| self.lanes[l].stats.delivered)
        }) else {
            return;
        };
        let lane = &mut self.lanes[lane];
        let n = bytes.len();
        for &b in bytes.iter().rev() {
            lane.held.push_front(b);
        }
        for end in &mut lane.ends {
            *end += n as u64;
        }
        lane.stats.delivered = lane.stats.delivered.saturating_sub(n as u64);
        if lane.lines {
            let lines = newlines(bytes);
            lane.stats.lines_delivered = lane.stats.lines_delivered.saturating_sub(lines);
        }
        // What was partly written is now whole again, at the front.
        lane.mid_line = false;
        self.sink_owner[sink] = None;
    }

    /// Carries what a running relay holds into this one, built for a new
    /// config (a reload). `old` must be settled (no lane ahead of its
    /// source) and hold nothing in pipes (`unpiped`).
    ///
    /// - A route in both configs (`map.routes`) keeps its lanes whole: held
    ///   bytes, end markers, counters, and each source's line in progress.
    /// - A lane of a route that changed or went gives its held bytes to a
    ///   lane of the same sink in the new relay (one whose route shares a
    ///   source with the old route, if any), after what that lane already
    ///   has; its sources' lines in progress are passed on first.
    /// - Bytes for a sink that nothing feeds any more are returned, by old
    ///   sink, for the caller to deliver or count.
    pub fn inherit(&mut self, mut old: Relay, map: &RelayMap<'_>) -> Vec<(SinkId, Vec<u8>)> {
        // Lines in progress that have nowhere to continue are passed on as
        // they are: their route changed, or their source is not the same
        // stream any more (a restarted process).
        for r in 0..old.routes.len() {
            for position in 0..old.routes[r].sources.len() {
                let source = old.routes[r].sources[position];
                if map.routes[r].is_none() || map.sources[source].is_none() {
                    old.flush_partial(r, position);
                }
            }
        }
        // A lane with a line partly written goes first: its sink must see
        // the rest of that line before anything else.
        let mut order: Vec<LaneId> = (0..old.lanes.len()).collect();
        order.sort_by_key(|&l| old.sink_owner[old.lanes[l].sink] != Some(l));
        let mut leftovers: Vec<(SinkId, Vec<u8>)> = Vec::new();
        for l in order {
            let lane = &old.lanes[l];
            let exact = map.routes[lane.route];
            let Some(sink) = map.sinks[lane.sink] else {
                if !lane.held.is_empty() {
                    leftovers.push((lane.sink, lane.held.iter().copied().collect()));
                }
                continue;
            };
            let shares_source = |new_route: usize| {
                old.routes[lane.route].sources.iter().any(|&s| {
                    map.sources[s].is_some_and(|n| self.routes[new_route].sources.contains(&n))
                })
            };
            let target = match exact {
                Some(r) => self.routes[r]
                    .lanes
                    .iter()
                    .copied()
                    .find(|&t| self.lanes[t].sink == sink),
                None => self.sink_lanes[sink]
                    .iter()
                    .copied()
                    .find(|&t| shares_source(self.lanes[t].route))
                    .or_else(|| self.sink_lanes[sink].first().copied()),
            };
            let Some(target) = target else {
                if !lane.held.is_empty() {
                    leftovers.push((lane.sink, lane.held.iter().copied().collect()));
                }
                continue;
            };
            let from = std::mem::take(&mut old.lanes[l].held);
            let lane = &old.lanes[l];
            let into = &mut self.lanes[target];
            let base = into.front + into.held.len() as u64;
            for &end in &lane.ends {
                // An end a drop moved the front past is due at once.
                into.ends.push_back(base + end.saturating_sub(lane.front));
            }
            if exact.is_some() {
                let s = lane.stats;
                into.stats.accepted += s.accepted;
                into.stats.delivered += s.delivered;
                into.stats.dropped += s.dropped;
                into.stats.lines_accepted += s.lines_accepted;
                into.stats.lines_delivered += s.lines_delivered;
                into.stats.lines_dropped += s.lines_dropped;
                // A lead on a stream that stays is kept (a source that could
                // not be settled); one on a stream that goes counts as taken.
                match map.sources[lane.ahead_from] {
                    Some(source) => {
                        into.ahead_sent = lane.ahead_sent;
                        into.ahead_from = source;
                    }
                    None => {
                        into.stats.accepted += lane.ahead_sent as u64;
                        into.stats.delivered += lane.ahead_sent as u64;
                    }
                }
            } else {
                into.stats.accepted += from.len() as u64;
                if into.lines {
                    into.stats.lines_accepted +=
                        from.iter().filter(|&&b| b == b'\n').count() as u64;
                }
            }
            if lane.mid_line && into.held.is_empty() {
                into.mid_line = true;
                self.sink_owner[sink] = Some(target);
            }
            into.held.extend(from);
        }
        for (r, mut route) in old.routes.into_iter().enumerate() {
            let Some(new_route) = map.routes[r] else {
                continue;
            };
            self.routes[new_route].long_lines += route.long_lines;
            for (position, &source) in route.sources.iter().enumerate() {
                let Some(new_source) = map.sources[source] else {
                    continue;
                };
                let into = &mut self.routes[new_route];
                if let Some(p) = into.sources.iter().position(|&s| s == new_source) {
                    into.ended[p] = route.ended[position];
                    into.in_long_line[p] = route.in_long_line[position];
                    into.partial[p] = std::mem::take(&mut route.partial[position]);
                }
            }
        }
        leftovers
    }

    /// The sinks `source` feeds.
    pub fn sinks_of(&self, source: SourceId) -> impl Iterator<Item = SinkId> + '_ {
        self.source_routes[source]
            .iter()
            .flat_map(|&(r, _)| self.routes[r].lanes.iter().map(|&l| self.lanes[l].sink))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Relay {
        /// `pending`, for lanes that hold everything in memory.
        fn pending_bytes(&self, sink: SinkId) -> Option<(LaneId, &[u8])> {
            self.pending(sink).map(|(lane, out)| match out {
                Out::Bytes(bytes) => (lane, bytes),
                Out::Piped(n) => panic!("lane {lane} has {n} bytes in a pipe"),
            })
        }
    }

    fn route(sources: &[usize], sinks: &[usize], buffer: usize, when_full: WhenFull) -> RouteSpec {
        RouteSpec {
            sources: sources.to_vec(),
            sinks: sinks.to_vec(),
            buffer,
            when_full,
            forward_eof: false,
            max_line: None,
        }
    }

    fn lines(
        sources: &[usize],
        sinks: &[usize],
        buffer: usize,
        when_full: WhenFull,
        max_line: usize,
    ) -> RouteSpec {
        RouteSpec {
            max_line: Some(max_line),
            ..route(sources, sinks, buffer, when_full)
        }
    }

    /// A tiny deterministic generator, so the tests need no crate.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    #[test]
    fn lines_from_several_sources_never_interleave() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let route = lines(&[0, 1, 2], &[0], 1 << 20, WhenFull::Block, 1 << 16);
        let mut relay = Relay::new(&[route], 3, 1);
        let mut streams: Vec<Vec<u8>> = Vec::new();
        for source in 0..3u8 {
            let mut stream = Vec::new();
            for n in 0..200 {
                let len = rng.below(300) as usize;
                stream.extend(format!("{source}:{n}:").bytes());
                stream.extend(std::iter::repeat_n(b'a' + source, len));
                stream.push(b'\n');
            }
            streams.push(stream);
        }
        let mut offsets = [0usize; 3];
        let mut out = Vec::new();
        while offsets.iter().zip(&streams).any(|(o, s)| *o < s.len()) {
            let source = rng.below(3) as usize;
            let stream = &streams[source];
            let take = (rng.below(700) as usize + 1).min(stream.len() - offsets[source]);
            let piece = &stream[offsets[source]..offsets[source] + take];
            offsets[source] += take;
            // The sink takes a random part at once, so writes end mid-line.
            relay.ingest(source, piece, |_, bytes| {
                let n = (rng.below(bytes.len() as u64 + 1) as usize).min(bytes.len());
                out.extend_from_slice(&bytes[..n]);
                n
            });
            let chunk = rng.below(500) as usize + 1;
            drain(&mut relay, 0, &mut out, chunk);
        }
        let mut seen = [0usize; 3];
        for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let text = std::str::from_utf8(line).unwrap();
            let mut parts = text.splitn(3, ':');
            let source: usize = parts.next().unwrap().parse().unwrap();
            let n: usize = parts.next().unwrap().parse().unwrap();
            assert_eq!(n, seen[source], "lines of source {source} out of order");
            let body = parts.next().unwrap();
            assert!(
                body.bytes().all(|b| b == b'a' + source as u8),
                "mixed line: {text}"
            );
            seen[source] += 1;
        }
        assert_eq!(seen, [200, 200, 200]);
        let stats = relay.lanes()[0].stats();
        assert_eq!(stats.lines_accepted, 600);
        assert_eq!(stats.lines_delivered, 600);
        check_identity(&relay);
    }

    #[test]
    fn a_long_line_goes_on_in_pieces_and_is_counted() {
        let mut relay = Relay::new(&[lines(&[0], &[0], 4096, WhenFull::Block, 10)], 1, 1);
        relay.ingest(0, b"short\n0123456789abcdefghij", |_, _| 0);
        relay.ingest(0, b"klm\nxy", |_, _| 0);
        let mut out = Vec::new();
        drain(&mut relay, 0, &mut out, 100);
        assert_eq!(out, b"short\n0123456789abcdefghijklm\n");
        assert_eq!(relay.long_lines(0), 1);
        assert_eq!(relay.partial_bytes(0), 2);
        // A whole long line inside one read is cut too.
        relay.ingest(0, b"\n0123456789ABCDEFGHIJ0123\n", |_, _| 0);
        drain(&mut relay, 0, &mut out, 100);
        assert!(out.ends_with(b"xy\n0123456789ABCDEFGHIJ0123\n"));
        assert_eq!(relay.long_lines(0), 2);
    }

    #[test]
    fn an_ended_source_passes_its_last_partial_line_without_a_newline() {
        let mut relay = Relay::new(&[lines(&[0, 1], &[0], 4096, WhenFull::Block, 100)], 2, 1);
        relay.ingest(0, b"one\ntw", |_, _| 0);
        relay.source_ended(0);
        relay.ingest(1, b"three\n", |_, _| 0);
        let mut out = Vec::new();
        drain(&mut relay, 0, &mut out, 100);
        assert_eq!(out, b"one\ntwthree\n");
        assert_eq!(relay.lanes()[0].stats().lines_accepted, 2);
        check_identity(&relay);
    }

    #[test]
    fn line_policies_drop_whole_lines() {
        let mut relay = Relay::new(&[lines(&[0], &[0], 10, WhenFull::DropNewest, 10)], 1, 1);
        relay.ingest(0, b"aaa\nbbb\nccc\nddd\n", |_, _| 0);
        let mut out = Vec::new();
        drain(&mut relay, 0, &mut out, 100);
        assert_eq!(out, b"aaa\nbbb\n");
        assert_eq!(relay.lanes()[0].stats().lines_dropped, 2);
        check_identity(&relay);

        let mut relay = Relay::new(&[lines(&[0], &[0], 10, WhenFull::DropOldest, 10)], 1, 1);
        // The first line is half written when the rest comes.
        relay.ingest(0, b"aaa\nbbb\n", |_, bytes| {
            assert_eq!(bytes, b"aaa\nbbb\n");
            2
        });
        relay.ingest(0, b"ccc\nddd\n", |_, _| 0);
        let mut out = b"aa".to_vec();
        drain(&mut relay, 0, &mut out, 100);
        assert_eq!(
            out, b"aaa\nccc\nddd\n",
            "never the line in progress, whole lines only"
        );
        assert_eq!(relay.lanes()[0].stats().lines_dropped, 1);
        check_identity(&relay);
    }

    #[test]
    fn a_line_in_progress_keeps_its_sink_across_routes() {
        let routes = [
            lines(&[0], &[0], 100, WhenFull::Block, 100),
            lines(&[1], &[0], 100, WhenFull::Block, 100),
        ];
        let mut relay = Relay::new(&routes, 2, 1);
        relay.ingest(0, b"first line\n", |_, _| 3);
        relay.ingest(1, b"other\n", |_, _| panic!("the sink is mid-line"));
        let (lane, bytes) = relay.pending_bytes(0).unwrap();
        assert_eq!((lane, bytes), (0, &b"st line\n"[..]));
        relay.delivered(0, 2);
        assert_eq!(relay.pending_bytes(0).unwrap().0, 0, "still mid-line");
        relay.delivered(0, 6);
        assert_eq!(relay.pending_bytes(0).unwrap(), (1, &b"other\n"[..]));
    }

    #[test]
    fn line_budget_leaves_room_for_the_line_in_progress() {
        let mut relay = Relay::new(&[lines(&[0], &[0], 4096, WhenFull::Block, 1000)], 1, 1);
        relay.ingest(0, &[b'x'; 300], |_, _| 0);
        assert_eq!(relay.read_budget(0, 1 << 20), 4096 - 300);
    }

    fn forwarding(sources: &[usize], sinks: &[usize]) -> RouteSpec {
        RouteSpec {
            forward_eof: true,
            ..route(sources, sinks, 100, WhenFull::Block)
        }
    }

    #[test]
    fn an_end_comes_after_every_source_ended_and_before_the_next_session() {
        let mut relay = Relay::new(&[forwarding(&[0, 1], &[0])], 2, 1);
        relay.ingest(0, b"a1", |_, _| 0);
        relay.ingest(1, b"b1", |_, _| 0);
        assert!(!relay.source_ended(0));
        relay.ingest(0, b"a2", |_, _| 0); // source 0 starts again: not ended
        assert!(!relay.source_ended(1));
        assert!(relay.source_ended(0));
        relay.ingest(0, b"next", |_, _| panic!("an end is pending"));
        let mut out = Vec::new();
        drain(&mut relay, 0, &mut out, 100);
        assert_eq!(out, b"a1b1a2");
        assert!(relay.end_due(0));
        relay.end_delivered(0);
        assert!(!relay.end_due(0));
        drain(&mut relay, 0, &mut out, 100);
        assert_eq!(out, b"a1b1a2next");
        assert!(!relay.end_pending(0));
    }

    #[test]
    fn ends_are_not_forwarded_on_hold_routes_or_to_mixed_sinks() {
        let routes = [
            forwarding(&[0], &[0]),
            route(&[1], &[0], 100, WhenFull::Block),
        ];
        let mut relay = Relay::new(&routes, 2, 1);
        assert!(!relay.source_ended(1));
        assert!(relay.source_ended(0));
        assert!(!relay.end_due(0), "the hold route never ends its lane");
    }

    #[test]
    fn drop_oldest_keeps_an_end_after_the_bytes_it_followed() {
        let spec = RouteSpec {
            buffer: 4,
            when_full: WhenFull::DropOldest,
            ..forwarding(&[0], &[0])
        };
        let mut relay = Relay::new(&[spec], 1, 1);
        relay.ingest(0, b"ab", |_, _| 0);
        relay.source_ended(0);
        relay.ingest(0, b"cdefgh", |_, _| 0);
        assert!(relay.end_due(0), "the old session's bytes were all dropped");
        relay.end_delivered(0);
        let mut out = Vec::new();
        drain(&mut relay, 0, &mut out, 100);
        assert_eq!(out, b"efgh");
        check_identity(&relay);
    }

    /// Writes everything pending for `sink` into `out`, `chunk` bytes at a time.
    fn drain(relay: &mut Relay, sink: SinkId, out: &mut Vec<u8>, chunk: usize) {
        while let Some((lane, bytes)) = relay.pending_bytes(sink) {
            let n = bytes.len().min(chunk);
            out.extend_from_slice(&bytes[..n]);
            relay.delivered(lane, n);
        }
    }

    fn check_identity(relay: &Relay) {
        for lane in relay.lanes() {
            let s = lane.stats();
            assert_eq!(
                s.accepted,
                s.delivered + s.dropped + lane.held() as u64,
                "{lane:?}"
            );
            if lane.lines() {
                let held = lane.held.iter().filter(|&&b| b == b'\n').count() as u64;
                assert_eq!(lane.held_lines(), held, "{lane:?}");
            }
        }
    }

    /// A model of the daemon's lane pipes: what `spliced` says went into a
    /// pipe is appended here, what `pending` says is piped is taken here.
    struct Pipes(Vec<Vec<u8>>);

    impl Pipes {
        /// Everything pending for `sink`, piped bytes included, in write order.
        fn drain(&mut self, relay: &mut Relay, sink: SinkId, out: &mut Vec<u8>, chunk: usize) {
            while let Some((lane, pending)) = relay.pending(sink) {
                let n = match pending {
                    Out::Bytes(bytes) => {
                        let n = bytes.len().min(chunk);
                        out.extend_from_slice(&bytes[..n]);
                        n
                    }
                    Out::Piped(n) => {
                        let n = n.min(chunk);
                        out.extend(self.0[lane].drain(..n));
                        n
                    }
                };
                relay.delivered(lane, n);
            }
        }
    }

    #[test]
    fn piped_bytes_go_first_and_copied_ones_after_them() {
        let mut relay = Relay::new(&[route(&[0], &[0], 100, WhenFull::Block)], 1, 1);
        let mut pipes = Pipes(vec![Vec::new()]);
        assert_eq!(
            relay.zero_copy_lanes(0),
            Some(vec![(0, 0, Target::Sink)]),
            "an idle sink takes bytes directly"
        );
        // The sink took 2 bytes, the pipe the next 3.
        relay.spliced(0, [0], &[Took { sent: 2, piped: 3 }], 5);
        pipes.0[0].extend(b"cde");
        assert_eq!(relay.lanes()[0].held(), 3);
        assert_eq!(relay.read_budget(0, 1000), 97, "piped bytes use the buffer");
        assert_eq!(relay.zero_copy_lanes(0), Some(vec![(0, 0, Target::Pipe)]));
        // A copy (a source that cannot be spliced) lands behind the pipe.
        relay.ingest(0, b"fg", |_, _| panic!("the lane is not idle"));
        assert_eq!(
            relay.zero_copy_lanes(0),
            None,
            "memory bytes wait for no pipe"
        );
        assert!(!relay.may_pipe(0));
        let mut out = b"ab".to_vec();
        pipes.drain(&mut relay, 0, &mut out, 2);
        assert_eq!(out, b"abcdefg");
        check_identity(&relay);
        assert_eq!(relay.lanes()[0].stats().delivered, 7);
        assert_eq!(relay.zero_copy_lanes(0), Some(vec![(0, 0, Target::Sink)]));
    }

    #[test]
    fn bytes_piped_ahead_of_the_source_are_counted_once_consumed() {
        let mut relay = Relay::new(&[route(&[0], &[0, 1], 100, WhenFull::Block)], 1, 2);
        let mut pipes = Pipes(vec![Vec::new(), Vec::new()]);
        // Sink 0 took 4 directly; sink 1 was full and its pipe took 6; only
        // 4 were consumed from the source.
        relay.spliced(
            0,
            [0, 1],
            &[Took { sent: 4, piped: 0 }, Took { sent: 0, piped: 6 }],
            4,
        );
        pipes.0[1].extend(b"abcdef");
        assert_eq!(relay.ahead_of(0), 2);
        assert_eq!(relay.zero_copy_lanes(0), None, "a lane ahead needs a copy");
        assert_eq!(relay.lanes()[1].in_pipe(), 6);
        check_identity(&relay);
        // The copying path reads on: lane 1 skips what its pipe has.
        let mut outs = [b"abcd".to_vec(), Vec::new()];
        relay.ingest(0, b"efgh", |sink, bytes| {
            outs[sink].extend_from_slice(bytes);
            bytes.len()
        });
        assert_eq!(relay.ahead_of(0), 0);
        pipes.drain(&mut relay, 1, &mut outs[1], 100);
        assert_eq!(outs[0], b"abcdefgh");
        assert_eq!(outs[1], b"abcdefgh");
        check_identity(&relay);
    }

    #[test]
    fn bytes_ahead_of_one_source_are_not_skipped_in_another() {
        // Sink 0 is fed by sources 0 and 1; source 0 also feeds sink 1.
        let routes = [
            route(&[0, 1], &[0], 100, WhenFull::Block),
            route(&[0], &[1], 100, WhenFull::Block),
        ];
        let mut relay = Relay::new(&routes, 2, 2);
        let mut outs = [b"abcdefghij".to_vec(), b"abcd".to_vec()];
        relay.spliced(
            0,
            [0, 1],
            &[Took { sent: 10, piped: 0 }, Took { sent: 4, piped: 0 }],
            4,
        );
        assert_eq!(relay.ahead_of(0), 6);
        assert_eq!(relay.ahead_of(1), 0, "source 1 owes nothing");
        let mut write = |sink: SinkId, bytes: &[u8]| {
            outs[sink].extend_from_slice(bytes);
            bytes.len()
        };
        relay.ingest(1, b"XYZ", &mut write);
        relay.ingest(0, b"efghij", &mut write);
        assert_eq!(outs[0], b"abcdefghijXYZ");
        assert_eq!(outs[1], b"abcdefghij");
        assert_eq!(relay.ahead_of(0), 0);
        check_identity(&relay);
    }

    #[test]
    fn bytes_piped_ahead_of_one_source_leave_no_room_for_another() {
        let routes = [
            route(&[0, 1], &[0], 100, WhenFull::Block),
            route(&[0], &[1], 100, WhenFull::Block),
        ];
        let mut relay = Relay::new(&routes, 2, 2);
        relay.spliced(
            0,
            [0, 1],
            &[
                Took {
                    sent: 0,
                    piped: 100,
                },
                Took { sent: 0, piped: 0 },
            ],
            0,
        );
        assert_eq!(relay.read_budget(1, 1000), 0, "the pipe is full already");
        assert_eq!(
            relay.read_budget(0, 1000),
            100,
            "source 0's own bytes are there"
        );
        relay.ingest(0, &[b'a'; 100], |_, _| 0);
        assert_eq!(relay.lanes()[0].held(), 100);
        assert_eq!(relay.lanes()[1].held(), 100);
        check_identity(&relay);
    }

    #[test]
    fn bytes_ahead_of_a_stream_that_ends_count_as_taken() {
        let mut relay = Relay::new(&[route(&[0], &[0, 1], 100, WhenFull::Block)], 1, 2);
        relay.spliced(
            0,
            [0, 1],
            &[Took { sent: 5, piped: 0 }, Took { sent: 1, piped: 3 }],
            2,
        );
        relay.commit_ahead(0);
        assert_eq!(relay.ahead_of(0), 0);
        assert_eq!(relay.lanes()[0].stats().delivered, 5);
        assert_eq!(relay.lanes()[1].stats().delivered, 1);
        assert_eq!(relay.lanes()[1].held(), 3);
        assert_eq!(relay.lanes()[1].in_pipe(), 3);
        check_identity(&relay);
    }

    #[test]
    fn a_sink_takes_turns_between_a_piped_lane_and_a_copied_one() {
        // Source 0's route blocks (a pipe); source 1's drops the oldest
        // (memory); both feed sink 0.
        let routes = [
            route(&[0], &[0], 100, WhenFull::Block),
            route(&[1], &[0], 100, WhenFull::DropOldest),
        ];
        let mut relay = Relay::new(&routes, 2, 1);
        let mut pipes = Pipes(vec![Vec::new(), Vec::new()]);
        relay.ingest(1, b"xyz", |_, _| 0);
        assert_eq!(relay.zero_copy_lanes(0), Some(vec![(0, 0, Target::Pipe)]));
        relay.spliced(0, [0], &[Took { sent: 0, piped: 3 }], 3);
        pipes.0[0].extend(b"abc");
        relay.ingest(1, b"XYZ", |_, _| panic!("the sink is busy"));
        let mut out = Vec::new();
        pipes.drain(&mut relay, 0, &mut out, 2);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.len(), 9);
        assert_eq!(text.replace(['x', 'y', 'z', 'X', 'Y', 'Z'], ""), "abc");
        assert_eq!(text.replace(['a', 'b', 'c'], ""), "xyzXYZ");
        assert!(!text.starts_with("abc"), "no turns taken: {text}");
        check_identity(&relay);
    }

    #[test]
    fn an_end_behind_lost_piped_bytes_moves_back() {
        let spec = RouteSpec {
            forward_eof: true,
            ..route(&[0], &[0], 100, WhenFull::Block)
        };
        let mut relay = Relay::new(&[spec], 1, 1);
        relay.spliced(0, [0], &[Took { sent: 0, piped: 4 }], 4);
        assert!(relay.source_ended(0));
        assert!(!relay.end_due(0));
        assert_eq!(relay.pipe_lost(0), 4);
        assert!(
            relay.end_due(0),
            "the end is due once the lost bytes are gone"
        );
        check_identity(&relay);
    }

    #[test]
    fn piped_bytes_are_dropped_counted_moved_to_memory_or_lost() {
        let mut relay = Relay::new(&[route(&[0], &[0], 100, WhenFull::Block)], 1, 1);
        relay.spliced(0, [0], &[Took { sent: 0, piped: 5 }], 5);
        relay.ingest(0, b"fg", |_, _| 0);
        assert_eq!(relay.discard(0), 7);
        assert_eq!(relay.lanes()[0].stats().dropped, 7);
        check_identity(&relay);
        // A reload reads the pipe back: its bytes come first, in memory.
        relay.spliced(0, [0], &[Took { sent: 0, piped: 3 }], 3);
        relay.ingest(0, b"de", |_, _| 0);
        relay.unpiped(0, b"abc");
        assert!(!relay.may_pipe(0));
        check_identity(&relay);
        let mut out = Vec::new();
        drain(&mut relay, 0, &mut out, 100);
        assert_eq!(out, b"abcde");
        // A pipe that gave back only part: the rest is counted as dropped.
        let mut relay = Relay::new(&[route(&[0], &[0], 100, WhenFull::Block)], 1, 1);
        relay.spliced(0, [0], &[Took { sent: 0, piped: 4 }], 4);
        relay.unpiped(0, b"ab");
        assert_eq!(relay.lanes()[0].stats().dropped, 2);
        check_identity(&relay);
        // A pipe that is lost: what it held is dropped; what it had ahead
        // of the source is still in the source and comes again.
        let mut relay = Relay::new(&[route(&[0], &[0], 100, WhenFull::Block)], 1, 1);
        relay.spliced(0, [0], &[Took { sent: 0, piped: 5 }], 3);
        assert_eq!(relay.pipe_lost(0), 3);
        assert_eq!(relay.lanes()[0].stats().dropped, 3);
        assert_eq!(relay.ahead_of(0), 0);
        assert_eq!(relay.lanes()[0].in_pipe(), 0);
        check_identity(&relay);
    }

    #[test]
    fn ends_wait_behind_piped_bytes() {
        let spec = RouteSpec {
            forward_eof: true,
            ..route(&[0], &[0], 100, WhenFull::Block)
        };
        let mut relay = Relay::new(&[spec], 1, 1);
        let mut pipes = Pipes(vec![b"abc".to_vec()]);
        relay.spliced(0, [0], &[Took { sent: 0, piped: 3 }], 3);
        assert!(relay.source_ended(0));
        assert!(!relay.end_due(0), "three bytes come first");
        assert_eq!(relay.pending(0), Some((0, Out::Piped(3))));
        // The next session's bytes may go into the pipe, behind the end.
        relay.spliced(0, [0], &[Took { sent: 0, piped: 2 }], 2);
        pipes.0[0].extend(b"de");
        assert_eq!(
            relay.pending(0),
            Some((0, Out::Piped(3))),
            "not past the end"
        );
        let mut out = Vec::new();
        pipes.drain(&mut relay, 0, &mut out, 100);
        assert_eq!(out, b"abc");
        assert!(relay.end_due(0));
        relay.end_delivered(0);
        pipes.drain(&mut relay, 0, &mut out, 100);
        assert_eq!(out, b"abcde");
        check_identity(&relay);
    }

    #[test]
    fn byte_routes_use_pipes() {
        let routes = [
            route(&[0], &[0], 100, WhenFull::DropOldest),
            lines(&[1], &[1], 100, WhenFull::Block, 50),
            route(&[2], &[2], 100, WhenFull::Block),
            route(&[3], &[3], 100, WhenFull::DropNewest),
        ];
        let relay = Relay::new(&routes, 4, 4);
        assert!(relay.may_pipe(0));
        assert!(!relay.may_pipe(1));
        assert!(relay.may_pipe(2));
        assert!(relay.may_pipe(3));
        assert_eq!(relay.zero_copy_lanes(1), None, "line routes are read");
    }

    #[test]
    fn a_drop_oldest_lane_drops_from_the_front_of_its_pipe() {
        let mut relay = Relay::new(&[route(&[0], &[0], 10, WhenFull::DropOldest)], 1, 1);
        let mut pipes = Pipes(vec![Vec::new()]);
        relay.spliced(0, [0], &[Took { sent: 0, piped: 8 }], 8);
        pipes.0[0].extend(b"01234567");
        // Room for 6 more: the 4 oldest go.
        assert_eq!(relay.make_room(0, 6), 4);
        assert_eq!(relay.lanes()[0].unwanted(), 4);
        assert_eq!(relay.lanes()[0].in_pipe(), 8);
        pipes.0[0].drain(..4);
        relay.let_go(0, 4);
        relay.spliced(0, [0], &[Took { sent: 0, piped: 6 }], 6);
        pipes.0[0].extend(b"abcdef");
        check_identity(&relay);
        // A copy behind the pipe pushes out the oldest again, from the pipe.
        relay.ingest(0, b"XY", |_, _| 0);
        assert_eq!(relay.lanes()[0].unwanted(), 2);
        pipes.0[0].drain(..2);
        relay.let_go(0, 2);
        let mut out = Vec::new();
        pipes.drain(&mut relay, 0, &mut out, 3);
        assert_eq!(out, b"67abcdefXY");
        assert_eq!(relay.lanes()[0].stats().dropped, 6);
        check_identity(&relay);
    }

    #[test]
    fn unpiping_skips_the_dropped_front() {
        let mut relay = Relay::new(&[route(&[0], &[0], 4, WhenFull::DropOldest)], 1, 1);
        relay.spliced(0, [0], &[Took { sent: 0, piped: 4 }], 4);
        relay.make_room(0, 2);
        relay.unpiped(0, b"0123");
        assert_eq!(relay.lanes()[0].unwanted(), 0);
        let mut out = Vec::new();
        drain(&mut relay, 0, &mut out, 10);
        assert_eq!(out, b"23");
        check_identity(&relay);
    }

    #[test]
    fn a_full_drop_newest_lane_drops_what_it_did_not_take() {
        let mut relay = Relay::new(&[route(&[0], &[0, 1], 10, WhenFull::DropNewest)], 1, 2);
        let mut pipes = Pipes(vec![Vec::new(), Vec::new()]);
        // Sink 0 took all 16 bytes; sink 1 was full: its pipe took 10 (its
        // buffer), and the other 6 are dropped for it.
        relay.spliced(
            0,
            [0, 1],
            &[Took { sent: 16, piped: 0 }, Took { sent: 0, piped: 10 }],
            16,
        );
        pipes.0[1].extend(b"0123456789");
        assert_eq!(relay.room(1), 0);
        assert_eq!(relay.lanes()[1].stats().dropped, 6);
        check_identity(&relay);
        // A copy behind the pipe (the copying path) finds no room either.
        relay.ingest(0, b"abc", |_, bytes| bytes.len());
        assert_eq!(relay.lanes()[1].stats().dropped, 9);
        let mut out = Vec::new();
        pipes.drain(&mut relay, 1, &mut out, 4);
        assert_eq!(out, b"0123456789");
        check_identity(&relay);
    }

    #[test]
    fn fan_out_delivers_every_byte_to_every_sink_in_order() {
        let mut relay = Relay::new(&[route(&[0], &[0, 1], 1024, WhenFull::Block)], 1, 2);
        let mut outs = [Vec::new(), Vec::new()];
        let data: Vec<u8> = (0..=255).cycle().take(5000).collect();
        for piece in data.chunks(300) {
            let budget = relay.read_budget(0, 4096);
            assert!(budget >= piece.len());
            // Sink 0 takes 100 bytes directly, sink 1 nothing.
            relay.ingest(0, piece, |sink, bytes| {
                if sink == 0 {
                    outs[0].extend_from_slice(&bytes[..100]);
                    100
                } else {
                    0
                }
            });
            check_identity(&relay);
            drain(&mut relay, 0, &mut outs[0], 7);
            drain(&mut relay, 1, &mut outs[1], 1000);
        }
        assert_eq!(outs[0], data);
        assert_eq!(outs[1], data);
        check_identity(&relay);
    }

    #[test]
    fn block_budget_is_the_least_free_space_of_blocking_lanes() {
        let routes = [
            route(&[0], &[0], 100, WhenFull::Block),
            route(&[0], &[1], 50, WhenFull::Block),
            route(&[0], &[2], 10, WhenFull::DropNewest),
        ];
        let mut relay = Relay::new(&routes, 1, 3);
        assert_eq!(relay.read_budget(0, 4096), 50);
        relay.ingest(0, &[1; 30], |_, _| 0);
        assert_eq!(relay.read_budget(0, 4096), 20);
        relay.ingest(0, &[2; 20], |_, _| 0);
        assert_eq!(relay.read_budget(0, 4096), 0);
        let mut out = Vec::new();
        drain(&mut relay, 1, &mut out, 5);
        assert_eq!(relay.read_budget(0, 4096), 50);
        assert_eq!(relay.lanes()[2].stats().dropped, 40);
        check_identity(&relay);
    }

    #[test]
    fn drop_newest_keeps_the_oldest_bytes() {
        let mut relay = Relay::new(&[route(&[0], &[0], 10, WhenFull::DropNewest)], 1, 1);
        relay.ingest(0, b"0123456", |_, _| 0);
        relay.ingest(0, b"789abcdef", |_, _| 0);
        let mut out = Vec::new();
        drain(&mut relay, 0, &mut out, 3);
        assert_eq!(out, b"0123456789");
        assert_eq!(relay.lanes()[0].stats().dropped, 6);
        check_identity(&relay);
    }

    #[test]
    fn drop_oldest_keeps_the_newest_bytes() {
        let mut relay = Relay::new(&[route(&[0], &[0], 10, WhenFull::DropOldest)], 1, 1);
        relay.ingest(0, b"0123456", |_, _| 0);
        relay.ingest(0, b"789abcdef", |_, _| 0);
        let mut out = Vec::new();
        drain(&mut relay, 0, &mut out, 4);
        assert_eq!(out, b"6789abcdef");
        assert_eq!(relay.lanes()[0].stats().dropped, 6);
        relay.ingest(0, b"the quick brown fox", |_, _| 0);
        out.clear();
        drain(&mut relay, 0, &mut out, 4);
        assert_eq!(out, b" brown fox");
        check_identity(&relay);
    }

    #[test]
    fn fan_in_alternates_between_routes_of_one_sink() {
        let routes = [
            route(&[0], &[0], 100, WhenFull::Block),
            route(&[1], &[0], 100, WhenFull::Block),
        ];
        let mut relay = Relay::new(&routes, 2, 1);
        relay.ingest(0, b"aaaa", |_, _| 0);
        relay.ingest(1, b"bbbb", |_, _| 0);
        let mut out = Vec::new();
        drain(&mut relay, 0, &mut out, 2);
        assert_eq!(out, b"aabbaabb");
        assert_eq!(relay.sources_feeding(0).collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn a_busy_sink_is_not_written_directly_out_of_order() {
        let mut relay = Relay::new(&[route(&[0], &[0], 100, WhenFull::Block)], 1, 1);
        relay.ingest(0, b"first", |_, _| 0);
        relay.ingest(0, b"second", |_, _| panic!("the sink still holds bytes"));
        let mut out = Vec::new();
        drain(&mut relay, 0, &mut out, 100);
        assert_eq!(out, b"firstsecond");
    }

    #[test]
    fn discard_counts_held_bytes_as_dropped() {
        let mut relay = Relay::new(&[route(&[0], &[0], 100, WhenFull::Block)], 1, 1);
        relay.ingest(0, b"lost", |_, _| 0);
        assert_eq!(relay.discard(0), 4);
        assert_eq!(relay.held_total(), 0);
        check_identity(&relay);
    }

    // -----------------------------------------------------------------------
    // Relay::inherit (reload)
    // -----------------------------------------------------------------------

    /// Everything pending for `sink`, as (lane, bytes) pieces in write order,
    /// `chunk` bytes at a time; stops at an end that is due.
    fn drain_by_lane(relay: &mut Relay, sink: SinkId, chunk: usize) -> Vec<(LaneId, Vec<u8>)> {
        let mut pieces: Vec<(LaneId, Vec<u8>)> = Vec::new();
        while let Some((lane, bytes)) = relay.pending_bytes(sink) {
            let n = bytes.len().min(chunk);
            match pieces.last_mut() {
                Some((l, v)) if *l == lane => v.extend_from_slice(&bytes[..n]),
                _ => pieces.push((lane, bytes[..n].to_vec())),
            }
            relay.delivered(lane, n);
        }
        pieces
    }

    #[test]
    fn inherit_keeps_an_end_that_drops_made_due() {
        let spec = RouteSpec {
            forward_eof: true,
            ..route(&[0], &[0], 4, WhenFull::DropOldest)
        };
        let mut old = Relay::new(std::slice::from_ref(&spec), 1, 1);
        old.ingest(0, b"ab", |_, _| 0);
        assert!(old.source_ended(0));
        // The next session pushes the end's bytes out: it is due, not lost.
        old.ingest(0, b"cdef", |_, _| 0);
        assert!(old.end_due(0));
        let mut relay = Relay::new(&[spec], 1, 1);
        relay.inherit(
            old,
            &RelayMap {
                routes: &[Some(0)],
                sources: &[Some(0)],
                sinks: &[Some(0)],
            },
        );
        assert!(relay.end_due(0));
        relay.end_delivered(0);
        let mut out = Vec::new();
        drain(&mut relay, 0, &mut out, 10);
        assert_eq!(out, b"cdef");
        check_identity(&relay);
    }

    #[test]
    fn inherit_carries_an_unchanged_route_whole() {
        // Old: one line route that forwards ends, source 0 -> sink 0.
        let old_spec = RouteSpec {
            forward_eof: true,
            ..lines(&[0], &[0], 100, WhenFull::Block, 100)
        };
        let mut old = Relay::new(&[old_spec], 1, 1);
        old.ingest(0, b"one\n", |_, _| 0);
        assert!(old.source_ended(0));
        old.ingest(0, b"two\nthr", |_, _| 0);
        // Two bytes of "one\n" went out: the lane is mid-line, owning sink 0.
        assert_eq!(old.pending_bytes(0), Some((0, &b"one\n"[..])));
        old.delivered(0, 2);
        let old_stats = old.lanes()[0].stats();
        assert_eq!((old_stats.accepted, old_stats.delivered), (8, 2));

        // New: another route first, and the same route at other indexes with
        // a bigger buffer.
        let carried = RouteSpec {
            forward_eof: true,
            ..lines(&[1], &[1], 4096, WhenFull::Block, 100)
        };
        let mut relay = Relay::new(&[route(&[0], &[0], 100, WhenFull::Block), carried], 2, 2);
        let leftovers = relay.inherit(
            old,
            &RelayMap {
                routes: &[Some(1)],
                sources: &[Some(1)],
                sinks: &[Some(1)],
            },
        );
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let lane = &relay.lanes()[1];
        assert_eq!(lane.held(), 6, "e\\ntwo\\n");
        assert_eq!(lane.stats(), old_stats, "counters carried as they were");
        assert_eq!(lane.held_lines(), 2);
        assert_eq!(relay.partial_bytes(1), 3, "the line in progress \"thr\"");
        check_identity(&relay);
        // The rest of the half-written line first, then the end, then the
        // next session; the source's line in progress goes on where it was.
        assert_eq!(relay.pending_bytes(1), Some((1, &b"e\n"[..])));
        relay.delivered(1, 2);
        assert!(relay.pending_bytes(1).is_none(), "nothing before the end");
        assert!(relay.end_due(1));
        relay.end_delivered(1);
        relay.ingest(1, b"ee\n", |_, _| 0);
        let mut out = Vec::new();
        drain(&mut relay, 1, &mut out, 100);
        assert_eq!(out, b"two\nthree\n");
        assert!(!relay.end_pending(1));
        let s = relay.lanes()[1].stats();
        assert_eq!((s.accepted, s.delivered, s.lines_delivered), (14, 14, 3));
        assert_eq!(relay.lanes()[0].stats(), LaneStats::default());
        check_identity(&relay);
    }

    #[test]
    fn inherit_merges_a_changed_routes_bytes_into_the_lane_of_the_same_sink() {
        // Old: two routes into sink 0, and one into sink 1.
        let mut old = Relay::new(
            &[
                route(&[0], &[0], 100, WhenFull::Block),
                route(&[1], &[0], 100, WhenFull::Block),
                route(&[2], &[1], 100, WhenFull::Block),
            ],
            3,
            2,
        );
        old.ingest(0, b"first", |_, _| 0);
        old.ingest(1, b"second", |_, _| 0);
        old.ingest(2, b"other", |_, _| 0);
        let kept_stats = old.lanes()[2].stats();
        // New: sources 0 and 1 merged into one route (a changed route), the
        // third route unchanged but now listed first.
        let mut relay = Relay::new(
            &[
                route(&[2], &[1], 100, WhenFull::Block),
                route(&[0, 1, 3], &[0], 100, WhenFull::Block),
            ],
            4,
            2,
        );
        let leftovers = relay.inherit(
            old,
            &RelayMap {
                routes: &[None, None, Some(0)],
                sources: &[Some(0), Some(1), Some(2)],
                sinks: &[Some(0), Some(1)],
            },
        );
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // Held bytes of both changed lanes, each in order, one after the other.
        assert_eq!(
            drain_by_lane(&mut relay, 0, 3),
            [(1, b"firstsecond".to_vec())]
        );
        assert_eq!(drain_by_lane(&mut relay, 1, 100), [(0, b"other".to_vec())]);
        // A changed route starts its counters over with what it inherited;
        // an unchanged one keeps them.
        let merged = relay.lanes()[1].stats();
        assert_eq!((merged.accepted, merged.delivered), (11, 11));
        let mut expected = kept_stats;
        expected.delivered += 5;
        assert_eq!(relay.lanes()[0].stats(), expected);
        check_identity(&relay);
        // The merged route goes on, with its new source too.
        let mut offered = Vec::new();
        relay.ingest(3, b"new", |sink, bytes| {
            offered.push((sink, bytes.to_vec()));
            bytes.len()
        });
        assert_eq!(offered, [(0, b"new".to_vec())]);
        check_identity(&relay);
    }

    #[test]
    fn inherit_returns_bytes_for_a_sink_nothing_feeds_any_more() {
        // Old: fan-out to sinks 0, 1 and 2, which none takes.
        let mut old = Relay::new(&[route(&[0], &[0, 1, 2], 100, WhenFull::Block)], 1, 3);
        old.ingest(0, b"data", |_, _| 0);
        // New: sink 0 still fed; sink 1 gone from the config; sink 2 still
        // there (as new sink 1) but in no route.
        let mut relay = Relay::new(&[route(&[0], &[0], 100, WhenFull::Block)], 1, 2);
        let mut leftovers = relay.inherit(
            old,
            &RelayMap {
                routes: &[None],
                sources: &[Some(0)],
                sinks: &[Some(0), None, Some(1)],
            },
        );
        leftovers.sort();
        assert_eq!(leftovers, [(1, b"data".to_vec()), (2, b"data".to_vec())]);
        assert_eq!(relay.held_total(), 4);
        assert_eq!(drain_by_lane(&mut relay, 0, 100), [(0, b"data".to_vec())]);
        check_identity(&relay);
    }

    #[test]
    fn inherit_puts_a_lane_mid_line_first() {
        // Old: two line routes into sink 0; route 1's line is half written
        // (its lane owns the sink) when route 0 holds a whole line.
        let mut old = Relay::new(
            &[
                lines(&[0], &[0], 100, WhenFull::Block, 100),
                lines(&[1], &[0], 100, WhenFull::Block, 100),
            ],
            2,
            1,
        );
        old.ingest(1, b"BBBB\n", |_, bytes| {
            assert_eq!(bytes, b"BBBB\n");
            2
        });
        old.ingest(0, b"aaa\n", |_, _| panic!("the sink is mid-line"));
        assert_eq!(old.pending_bytes(0), Some((1, &b"BB\n"[..])));
        // New: both sources on one line route (changed), with a second sink.
        let mut relay = Relay::new(&[lines(&[0, 1], &[0, 1], 100, WhenFull::Block, 100)], 2, 2);
        let leftovers = relay.inherit(
            old,
            &RelayMap {
                routes: &[None, None],
                sources: &[Some(0), Some(1)],
                sinks: &[Some(0)],
            },
        );
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // The rest of the half-written line comes before anything else, and
        // the sink stays its lane's until that line is complete.
        assert_eq!(relay.pending_bytes(0), Some((0, &b"BB\naaa\n"[..])));
        relay.delivered(0, 1);
        relay.ingest(0, b"ccc\n", |sink, _| {
            assert_eq!(sink, 1, "sink 0 is mid-line");
            0
        });
        let mut out = b"BBB".to_vec();
        drain(&mut relay, 0, &mut out, 1);
        assert_eq!(out, b"BBBB\naaa\nccc\n");
        check_identity(&relay);
    }
}
