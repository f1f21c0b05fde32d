//! A lane: the bytes held for one sink of one route, its end markers, its
//! counters, and the `when_full` policies that keep it within its buffer.

use std::collections::VecDeque;

use crate::config::WhenFull;

use super::{SinkId, SourceId};

/// An empty lane keeps at most this much memory.
const KEEP_CAPACITY: usize = 64 * 1024;

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

pub(super) fn newlines(bytes: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', bytes).count() as u64
}

#[derive(Debug)]
pub struct Lane {
    pub route: usize,
    pub sink: SinkId,
    /// Bytes held in the daemon's private pipe for this lane, before `held`.
    pub(super) piped: usize,
    /// Bytes in front of those in the pipe that were dropped (counted) and
    /// that the daemon lets go of before it reads the pipe.
    pub(super) unwanted: usize,
    pub(super) held: VecDeque<u8>,
    /// Stream offset of the first held byte: bytes ever removed from the front.
    pub(super) front: u64,
    /// Stream offsets at which a session ends, oldest first.
    pub(super) ends: VecDeque<u64>,
    pub(super) capacity: usize,
    pub(super) policy: WhenFull,
    /// Line framing: only whole lines are dropped, and a line in progress
    /// keeps its sink.
    pub(super) lines: bool,
    /// The first held line has been partly written.
    pub(super) mid_line: bool,
    /// Bytes of the source's coming stream that `tee` already put into the
    /// sink (`ahead_sent`) and, after those, into the lane's pipe
    /// (`ahead_piped`): when they are consumed from the source, this lane
    /// skips them, counting them as delivered and as piped.
    pub(super) ahead_sent: usize,
    pub(super) ahead_piped: usize,
    /// The source those bytes are ahead of (one at a time: a source is
    /// not spliced while any lane it feeds is ahead).
    pub(super) ahead_from: SourceId,
    pub(super) stats: LaneStats,
    /// A line lane's piped bytes in the runs they were piped in, with the
    /// lines in each, oldest first: delivering a run delivers its lines.
    pub(super) piped_runs: VecDeque<(usize, u64)>,
    /// Bytes at the front of the pipe taken back after a crash, written in
    /// runs that are not known (nor how many pages they take).
    pub(super) recovered: usize,
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
    /// Nowhere: the lane's pipe has these bytes already (it got ahead of
    /// the source), and the transfer consumes at most as many.
    Skip,
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

/// The route of a lane slot a reload emptied (a new lane may take it).
const RETIRED: usize = usize::MAX;

impl Lane {
    /// An empty lane of route `route` into `sink`.
    pub(super) fn new(route: usize, sink: SinkId, spec: &super::RouteSpec) -> Lane {
        Lane {
            route,
            sink,
            piped: 0,
            unwanted: 0,
            held: VecDeque::new(),
            front: 0,
            ends: VecDeque::new(),
            capacity: spec.buffer,
            policy: spec.when_full,
            lines: spec.max_line.is_some(),
            mid_line: false,
            ahead_sent: 0,
            ahead_piped: 0,
            ahead_from: 0,
            stats: LaneStats::default(),
            piped_runs: VecDeque::new(),
            recovered: 0,
        }
    }

    /// An empty slot: no route has it, and it holds and counts nothing.
    pub(super) fn retired() -> Lane {
        Lane {
            route: RETIRED,
            sink: 0,
            piped: 0,
            unwanted: 0,
            held: VecDeque::new(),
            front: 0,
            ends: VecDeque::new(),
            capacity: 0,
            policy: WhenFull::Block,
            lines: false,
            mid_line: false,
            ahead_sent: 0,
            ahead_piped: 0,
            ahead_from: 0,
            stats: LaneStats::default(),
            piped_runs: VecDeque::new(),
            recovered: 0,
        }
    }

    /// Whether no route has this lane slot now.
    pub fn is_retired(&self) -> bool {
        self.route == RETIRED
    }

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
        s.lines_accepted
            .saturating_sub(s.lines_delivered)
            .saturating_sub(s.lines_dropped)
    }

    /// Room left: bytes piped ahead of a source take room too, as they
    /// are in the pipe already.
    pub(super) fn free(&self) -> usize {
        self.capacity.saturating_sub(self.held() + self.ahead_piped)
    }

    /// Room left for bytes from `source`: those it is ahead of need none.
    pub(super) fn free_for(&self, source: SourceId) -> usize {
        let own = if self.ahead_from == source {
            self.ahead_piped
        } else {
            0
        };
        self.free() + own
    }

    /// Nothing to write and no end to deliver.
    pub(super) fn is_idle(&self) -> bool {
        self.held() == 0 && self.ends.is_empty()
    }

    pub(super) fn ahead(&self) -> usize {
        self.ahead_sent + self.ahead_piped
    }

    /// The next end marker has been reached: no byte may go before it is given.
    pub(super) fn at_end(&self) -> bool {
        self.ends.front().is_some_and(|&end| end <= self.front)
    }

    /// Bytes that may be written now: the piped ones first, up to the next
    /// end marker.
    pub(super) fn writable(&self) -> Option<Out<'_>> {
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

    /// Counts the lines of the first `n` piped bytes as delivered: those
    /// of every run they finish.
    pub(super) fn deliver_runs(&mut self, mut n: usize) {
        self.recovered = self.recovered.saturating_sub(n);
        while n > 0 {
            let Some(run) = self.piped_runs.front_mut() else {
                return;
            };
            if run.0 > n {
                run.0 -= n;
                return;
            }
            n -= run.0;
            self.stats.lines_delivered += run.1;
            self.piped_runs.pop_front();
        }
    }

    pub(super) fn remove_front(&mut self, n: usize) {
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
    pub(super) fn forget(&mut self, at: usize, n: usize) {
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
        self.collapse_ends();
    }

    /// Ends with no byte left between them are one end: sessions whose
    /// every byte was dropped leave one, so that a lane nobody reads holds
    /// at most one end per byte it holds, plus one.
    fn collapse_ends(&mut self) {
        let front = self.front;
        let mut last = None;
        self.ends.retain(|&end| {
            let at = end.max(front);
            let keep = last != Some(at);
            last = Some(at);
            keep
        });
    }

    /// Drops `n` bytes held in memory starting `at` bytes after the front,
    /// keeping the end markers after the bytes they followed. Only called
    /// where the lane has no piped bytes: line lanes never pipe, and
    /// `drop_front` and `discard` take the piped ones first.
    pub(super) fn drop_held(&mut self, at: usize, n: usize) {
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
            self.collapse_ends();
            return;
        }
        self.held.drain(at..at + n);
        let start = self.front + at as u64;
        for end in &mut self.ends {
            if *end > start {
                *end = (*end).saturating_sub(n as u64).max(start);
            }
        }
        self.collapse_ends();
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
    pub(super) fn accept(&mut self, data: &[u8], direct: usize) {
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
    pub(super) fn drop_front(&mut self, n: usize) {
        let from_pipe = n.min(self.piped);
        self.piped -= from_pipe;
        self.unwanted += from_pipe;
        self.front += from_pipe as u64;
        self.stats.dropped += from_pipe as u64;
        self.drop_held(0, n - from_pipe);
        self.collapse_ends();
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
