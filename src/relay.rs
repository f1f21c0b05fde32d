//! The relay engine's state: which source feeds which sink, the bytes held
//! for each sink, the full-buffer policies and the byte accounting.
//!
//! **Invariant:** this module makes no system call. The daemon reads, writes
//! and polls; the relay decides how much may be read, what to write next and
//! what to drop, so that all of it can be tested here without a single fd.
//!
//! A *lane* is one (route, sink) pair: each has its own buffer, bounded by the
//! route's `buffer`, and its own counters. For every lane, at all times,
//! `accepted = delivered + held + dropped`.
//!
//! On routes with `eof = "forward"`, a lane also holds *end markers*: when
//! every source of the route has ended its session, each lane gets a marker
//! after its last byte. A sink is given its end once every lane feeding it
//! has reached a marker, and not a byte of the next session before that.

use std::collections::VecDeque;

use crate::config::WhenFull;

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
}

#[derive(Debug)]
pub struct Lane {
    pub route: usize,
    pub sink: SinkId,
    held: VecDeque<u8>,
    /// Stream offset of `held[0]`: bytes ever removed from the front.
    front: u64,
    /// Stream offsets at which a session ends, oldest first.
    ends: VecDeque<u64>,
    capacity: usize,
    policy: WhenFull,
    stats: LaneStats,
}

impl Lane {
    pub fn held(&self) -> usize {
        self.held.len()
    }

    pub fn stats(&self) -> LaneStats {
        self.stats
    }

    pub fn policy(&self) -> WhenFull {
        self.policy
    }

    fn free(&self) -> usize {
        self.capacity.saturating_sub(self.held.len())
    }

    /// Nothing to write and no end to deliver.
    fn is_idle(&self) -> bool {
        self.held.is_empty() && self.ends.is_empty()
    }

    /// The next end marker has been reached: no byte may go before it is given.
    fn at_end(&self) -> bool {
        self.ends.front().is_some_and(|&end| end <= self.front)
    }

    /// Bytes that may be written now: up to the next end marker.
    fn writable(&self) -> &[u8] {
        let first = self.held.as_slices().0;
        match self.ends.front() {
            Some(&end) => {
                let before_end =
                    usize::try_from(end.saturating_sub(self.front)).unwrap_or(usize::MAX);
                &first[..first.len().min(before_end)]
            }
            None => first,
        }
    }

    fn remove_front(&mut self, n: usize) {
        self.held.drain(..n);
        self.front += n as u64;
    }

    /// Takes `data` after `direct` bytes of it were already written straight
    /// to the sink; holds the rest as far as the policy allows.
    fn accept(&mut self, data: &[u8], direct: usize) {
        self.stats.accepted += data.len() as u64;
        self.stats.delivered += direct as u64;
        let rest = &data[direct..];
        let free = self.free();
        if rest.len() <= free {
            self.held.extend(rest);
            return;
        }
        match self.policy {
            // The caller never reads more than the free space of a blocking
            // lane; holding the excess anyway keeps every byte, and the
            // next read budget is smaller to make up for it.
            WhenFull::Block => self.held.extend(rest),
            WhenFull::DropNewest => {
                self.held.extend(&rest[..free]);
                self.stats.dropped += (rest.len() - free) as u64;
            }
            WhenFull::DropOldest => {
                let keep_new = rest.len().min(self.capacity);
                let drop_old = (self.held.len() + keep_new).saturating_sub(self.capacity);
                let drop_new = rest.len() - keep_new;
                self.remove_front(drop_old);
                // Bytes dropped before they were ever held still move the
                // stream on: an end marker stays after the bytes it followed.
                self.front += drop_new as u64;
                self.held.extend(&rest[drop_new..]);
                self.stats.dropped += (drop_old + drop_new) as u64;
            }
        }
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
}

#[derive(Debug)]
pub struct Relay {
    lanes: Vec<Lane>,
    /// For each source, the lanes it feeds (one per sink of each of its routes).
    source_lanes: Vec<Vec<LaneId>>,
    /// For each sink, the lanes that feed it.
    sink_lanes: Vec<Vec<LaneId>>,
    /// For each lane, the sources of its route.
    lane_sources: Vec<Vec<SourceId>>,
    /// Round-robin position among a sink's lanes, so no route starves another.
    sink_turn: Vec<usize>,
    routes: Vec<RouteState>,
}

#[derive(Debug)]
struct RouteState {
    sources: Vec<SourceId>,
    lanes: Vec<LaneId>,
    forward_eof: bool,
    /// Which sources have ended their current session.
    ended: Vec<bool>,
}

impl Relay {
    pub fn new(routes: &[RouteSpec], sources: usize, sinks: usize) -> Relay {
        let mut relay = Relay {
            lanes: Vec::new(),
            source_lanes: vec![Vec::new(); sources],
            sink_lanes: vec![Vec::new(); sinks],
            lane_sources: Vec::new(),
            sink_turn: vec![0; sinks],
            routes: Vec::new(),
        };
        for (route_index, route) in routes.iter().enumerate() {
            relay.routes.push(RouteState {
                sources: route.sources.clone(),
                lanes: Vec::new(),
                forward_eof: route.forward_eof,
                ended: vec![false; route.sources.len()],
            });
            for &sink in &route.sinks {
                let lane = relay.lanes.len();
                relay.routes[route_index].lanes.push(lane);
                relay.lanes.push(Lane {
                    route: route_index,
                    sink,
                    held: VecDeque::new(),
                    front: 0,
                    ends: VecDeque::new(),
                    capacity: route.buffer,
                    policy: route.when_full,
                    stats: LaneStats::default(),
                });
                relay.lane_sources.push(route.sources.clone());
                relay.sink_lanes[sink].push(lane);
                for &source in &route.sources {
                    relay.source_lanes[source].push(lane);
                }
            }
        }
        relay
    }

    pub fn lanes(&self) -> &[Lane] {
        &self.lanes
    }

    pub fn source_count(&self) -> usize {
        self.source_lanes.len()
    }

    /// How many bytes may be read from `source` now: the least free space
    /// among the blocking lanes it feeds, or `max` if none of them blocks.
    pub fn read_budget(&self, source: SourceId, max: usize) -> usize {
        self.source_lanes[source]
            .iter()
            .map(|&l| &self.lanes[l])
            .filter(|lane| lane.policy == WhenFull::Block)
            .map(Lane::free)
            .fold(max, usize::min)
    }

    /// Hands bytes read from `source` to every lane it feeds. Where a lane
    /// holds nothing and its sink has nothing else pending, `write_now` is
    /// offered the bytes first and returns how many it wrote, which saves a
    /// copy into the lane.
    pub fn ingest(
        &mut self,
        source: SourceId,
        data: &[u8],
        mut write_now: impl FnMut(SinkId, &[u8]) -> usize,
    ) {
        for route in &mut self.routes {
            if let Some(i) = route.sources.iter().position(|&s| s == source) {
                route.ended[i] = false;
            }
        }
        for i in 0..self.source_lanes[source].len() {
            let lane_id = self.source_lanes[source][i];
            let sink = self.lanes[lane_id].sink;
            let sink_idle = self.sink_lanes[sink]
                .iter()
                .all(|&l| self.lanes[l].is_idle());
            let direct = if sink_idle {
                write_now(sink, data).min(data.len())
            } else {
                0
            };
            self.lanes[lane_id].accept(data, direct);
        }
    }

    /// The next bytes to write to `sink`, and the lane they come from.
    pub fn pending(&self, sink: SinkId) -> Option<(LaneId, &[u8])> {
        let lanes = &self.sink_lanes[sink];
        let n = lanes.len();
        (0..n)
            .map(|k| lanes[(self.sink_turn[sink] + k) % n])
            .map(|l| (l, self.lanes[l].writable()))
            .find(|(_, bytes)| !bytes.is_empty())
    }

    /// Records that `n` bytes from the front of `lane` were written.
    pub fn delivered(&mut self, lane: LaneId, n: usize) {
        let lane_ref = &mut self.lanes[lane];
        let n = n.min(lane_ref.held.len());
        lane_ref.remove_front(n);
        lane_ref.stats.delivered += n as u64;
        let sink = lane_ref.sink;
        let turn = &mut self.sink_turn[sink];
        *turn = (*turn + 1) % self.sink_lanes[sink].len().max(1);
    }

    /// Counts everything `sink` still holds as dropped (it cannot take bytes)
    /// and returns how many bytes that was. Its ends are dropped with them.
    pub fn discard(&mut self, sink: SinkId) -> usize {
        let mut total = 0;
        for &l in &self.sink_lanes[sink] {
            let lane = &mut self.lanes[l];
            let n = lane.held.len();
            total += n;
            lane.stats.dropped += n as u64;
            lane.remove_front(n);
            lane.ends.clear();
        }
        total
    }

    /// Records that `source` ended its session. On each route that forwards
    /// ends and whose every source has now ended, every lane gets an end
    /// marker after its last byte. Returns whether any marker was added.
    pub fn source_ended(&mut self, source: SourceId) -> bool {
        let mut marked = false;
        for route in &mut self.routes {
            let Some(i) = route.sources.iter().position(|&s| s == source) else {
                continue;
            };
            route.ended[i] = true;
            if route.forward_eof && route.ended.iter().all(|&e| e) {
                route.ended.iter_mut().for_each(|e| *e = false);
                for &l in &route.lanes {
                    let lane = &mut self.lanes[l];
                    let end = lane.front + lane.held.len() as u64;
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
            .flat_map(|&l| self.lane_sources[l].iter().copied())
    }

    /// The lanes feeding `sink`.
    pub fn lanes_of_sink(&self, sink: SinkId) -> &[LaneId] {
        &self.sink_lanes[sink]
    }

    /// The sinks `source` feeds.
    pub fn sinks_of(&self, source: SourceId) -> impl Iterator<Item = SinkId> + '_ {
        self.source_lanes[source]
            .iter()
            .map(|&l| self.lanes[l].sink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(sources: &[usize], sinks: &[usize], buffer: usize, when_full: WhenFull) -> RouteSpec {
        RouteSpec {
            sources: sources.to_vec(),
            sinks: sinks.to_vec(),
            buffer,
            when_full,
            forward_eof: false,
        }
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
        while let Some((lane, bytes)) = relay.pending(sink) {
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
        }
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
}
