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
                self.held.drain(..drop_old);
                self.held.extend(&rest[rest.len() - keep_new..]);
                self.stats.dropped += (drop_old + rest.len() - keep_new) as u64;
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
}

impl Relay {
    pub fn new(routes: &[RouteSpec], sources: usize, sinks: usize) -> Relay {
        let mut relay = Relay {
            lanes: Vec::new(),
            source_lanes: vec![Vec::new(); sources],
            sink_lanes: vec![Vec::new(); sinks],
            lane_sources: Vec::new(),
            sink_turn: vec![0; sinks],
        };
        for (route_index, route) in routes.iter().enumerate() {
            for &sink in &route.sinks {
                let lane = relay.lanes.len();
                relay.lanes.push(Lane {
                    route: route_index,
                    sink,
                    held: VecDeque::new(),
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
        for i in 0..self.source_lanes[source].len() {
            let lane_id = self.source_lanes[source][i];
            let sink = self.lanes[lane_id].sink;
            let sink_idle = self.sink_lanes[sink]
                .iter()
                .all(|&l| self.lanes[l].held.is_empty());
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
            .find(|&l| !self.lanes[l].held.is_empty())
            .map(|l| (l, self.lanes[l].held.as_slices().0))
    }

    /// Records that `n` bytes from the front of `lane` were written.
    pub fn delivered(&mut self, lane: LaneId, n: usize) {
        let lane_ref = &mut self.lanes[lane];
        let n = n.min(lane_ref.held.len());
        lane_ref.held.drain(..n);
        lane_ref.stats.delivered += n as u64;
        let sink = lane_ref.sink;
        let turn = &mut self.sink_turn[sink];
        *turn = (*turn + 1) % self.sink_lanes[sink].len().max(1);
    }

    /// Counts everything `sink` still holds as dropped (its writes fail for
    /// good) and returns how many bytes that was.
    pub fn discard(&mut self, sink: SinkId) -> usize {
        let mut total = 0;
        for &l in &self.sink_lanes[sink] {
            let lane = &mut self.lanes[l];
            total += lane.held.len();
            lane.stats.dropped += lane.held.len() as u64;
            lane.held.clear();
        }
        total
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
        }
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
        assert_eq!(out, b"brown fox");
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
