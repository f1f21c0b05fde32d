//! Carrying held bytes over: out of lane pipes (`unpiped`, `pipe_lost`),
//! back from a replaced sink (`give_back`), and into a new relay on a
//! reload (`inherit`).

use super::lane::newlines;
use super::{LaneId, Relay, SinkId, SourceId};

/// How the endpoints and routes of a running relay map onto a new one:
/// for each old index, the same thing in the new config, if it is there.
#[derive(Debug)]
pub struct RelayMap<'a> {
    pub routes: &'a [Option<usize>],
    pub sources: &'a [Option<SourceId>],
    pub sinks: &'a [Option<SinkId>],
}

impl Relay {
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
}
