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

use crate::config::WhenFull;

mod carry;
mod framing;
mod handover;
mod lane;
mod logged;
mod zero_copy;
pub use carry::RelayMap;
pub use handover::{HeldBytes, LineInProgress};
use lane::newlines;
pub use lane::{Lane, LaneStats, Out, Target, Took};

/// Indexes into the daemon's tables of sources and sinks.
pub type SourceId = usize;
pub type SinkId = usize;
pub type LaneId = usize;

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

#[derive(Debug)]
pub struct Relay {
    /// By id: a lane keeps its id for as long as its route and sink stay,
    /// through reloads; a slot no route has is `retired`.
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
        Relay::build(routes, sources, sinks, &[], 0, Vec::new())
    }

    /// A relay for `routes`, whose lane `p` of route `r` has the id
    /// `kept[r][p]` where that is set (a lane a reload carries over), and
    /// otherwise one of `free`, or a new one past `slots`.
    fn build(
        routes: &[RouteSpec],
        sources: usize,
        sinks: usize,
        kept: &[Vec<Option<LaneId>>],
        slots: usize,
        mut free: Vec<LaneId>,
    ) -> Relay {
        let lanes: usize = routes.iter().map(|r| r.sinks.len()).sum();
        let mut relay = Relay {
            lanes: Vec::with_capacity(slots.max(lanes)),
            routes: Vec::with_capacity(routes.len()),
            source_routes: vec![Vec::new(); sources],
            sink_lanes: vec![Vec::new(); sinks],
            sink_turn: vec![0; sinks],
            sink_owner: vec![None; sinks],
        };
        relay.lanes.resize_with(slots, Lane::retired);
        for (route_index, route) in routes.iter().enumerate() {
            let mut lanes = Vec::new();
            for (position, &sink) in route.sinks.iter().enumerate() {
                let kept = kept.get(route_index).and_then(|k| k.get(position).copied());
                let lane = match kept.flatten().or_else(|| free.pop()) {
                    Some(id) => id,
                    None => {
                        relay.lanes.push(Lane::retired());
                        relay.lanes.len() - 1
                    }
                };
                lanes.push(lane);
                relay.sink_lanes[sink].push(lane);
                relay.lanes[lane] = Lane::new(route_index, sink, route);
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

    /// The lanes some route has, with their ids (`lanes` also has the
    /// empty slots a reload left).
    pub fn live_lanes(&self) -> impl Iterator<Item = (LaneId, &Lane)> {
        self.lanes
            .iter()
            .enumerate()
            .filter(|(_, lane)| !lane.is_retired())
    }

    pub fn lanes(&self) -> &[Lane] {
        &self.lanes
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
            self.ingest_lines(r, position, source, data, max_line, &mut write_now);
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

    /// Whether every blocking lane `source` feeds is empty.
    pub fn blocking_lanes_empty(&self, source: SourceId) -> bool {
        self.source_routes[source].iter().all(|&(r, _)| {
            self.routes[r].lanes.iter().all(|&l| {
                let lane = &self.lanes[l];
                lane.policy != WhenFull::Block || lane.held() == 0
            })
        })
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
            lane_ref.deliver_runs(n);
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

    /// The lanes of `route`, one per sink.
    pub fn lanes_of_route(&self, route: usize) -> &[LaneId] {
        self.routes.get(route).map_or(&[], |r| &r.lanes)
    }

    /// The lanes feeding `sink`.
    pub fn lanes_of_sink(&self, sink: SinkId) -> &[LaneId] {
        &self.sink_lanes[sink]
    }

    /// The sinks `source` feeds.
    pub fn sinks_of(&self, source: SourceId) -> impl Iterator<Item = SinkId> + '_ {
        self.source_routes[source]
            .iter()
            .flat_map(|&(r, _)| self.routes[r].lanes.iter().map(|&l| self.lanes[l].sink))
    }
}

#[cfg(test)]
mod tests;
