//! Carrying held bytes over: out of lane pipes (`unpiped`, `pipe_lost`),
//! back from a replaced sink (`give_back`), and into the relay of a new
//! config on a reload (`carry`).

use super::lane::newlines;
use super::{Lane, LaneId, Relay, RouteSpec, SinkId, SourceId};

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
        // Their lines are those the memory now has (a pipe taken back
        // after a crash did not say how many it had).
        if lane.lines {
            lane.recovered = 0;
            let runs: u64 = lane.piped_runs.drain(..).map(|(_, lines)| lines).sum();
            lane.stats.lines_accepted =
                lane.stats.lines_accepted.saturating_sub(runs) + newlines(&bytes[..n]);
        }
        for &b in bytes[..n].iter().rev() {
            lane.held.push_front(b);
        }
        lane.forget(n, lost);
    }

    /// Records that `lane` was given a pipe that already holds `n` bytes
    /// for its sink (taken back from the service manager's fd store after
    /// a crash): they are held, first in line, and counted as accepted.
    pub fn recovered_pipe(&mut self, lane: LaneId, n: usize) {
        let lane = &mut self.lanes[lane];
        lane.piped += n;
        lane.stats.accepted += n as u64;
        if lane.lines && n > 0 {
            // Whole lines, but how many is not known.
            lane.piped_runs.push_back((n, 0));
            lane.recovered += n;
        }
    }

    /// Records that `lane`'s pipe went away with what it held: those bytes
    /// are counted as dropped, and returned. Bytes it held ahead of the
    /// source are still in the source and come again.
    pub fn pipe_lost(&mut self, lane: LaneId) -> usize {
        let lane = &mut self.lanes[lane];
        lane.ahead_piped = 0;
        lane.unwanted = 0;
        let lost = std::mem::take(&mut lane.piped);
        let lines: u64 = lane.piped_runs.drain(..).map(|(_, lines)| lines).sum();
        lane.stats.lines_dropped += lines;
        lane.recovered = 0;
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
        // They no longer count as delivered; those this lane did not
        // deliver itself (it is new, or took the place of another) are
        // accepted here.
        let back = (n as u64).min(lane.stats.delivered);
        lane.stats.delivered -= back;
        lane.stats.accepted += n as u64 - back;
        if lane.lines {
            let lines = newlines(bytes);
            let back = lines.min(lane.stats.lines_delivered);
            lane.stats.lines_delivered -= back;
            lane.stats.lines_accepted += lines - back;
        }
        // What was partly written is now whole again, at the front.
        lane.mid_line = false;
        self.sink_owner[sink] = None;
    }

    /// The relay for a new config (a reload), with what `old` holds carried
    /// over. `old` must be settled (no lane ahead of a source whose stream
    /// goes on), and a lane that is not carried whole, or that takes bytes
    /// from one that is not, must hold nothing in a pipe (`unpiped`).
    ///
    /// - A route in both configs (`map.routes`) keeps its lanes whole and
    ///   under the same ids: held bytes (in memory and in the lane's pipe),
    ///   end markers, counters, and each source's line in progress. Only
    ///   its buffer and policy follow the new config.
    /// - A lane of a route that changed or went gives its held bytes to a
    ///   lane of the same sink (one whose route shares a source with the
    ///   old route, if any): after what that lane already has, or before
    ///   it if it was writing a line to the sink. Its sources' lines in
    ///   progress are passed on first. Its id is free for a new lane.
    /// - Bytes for a sink that nothing feeds any more are returned, by old
    ///   sink, for the caller to deliver or count.
    pub fn carry(
        mut old: Relay,
        routes: &[RouteSpec],
        map: &RelayMap<'_>,
        (sources, sinks): (usize, usize),
    ) -> (Relay, Vec<(SinkId, Vec<u8>)>) {
        let mapped_source = |s: SourceId| map.sources.get(s).copied().flatten();
        let mapped_sink = |k: SinkId| map.sinks.get(k).copied().flatten();
        // A lead on a stream that goes counts as taken.
        for s in 0..old.source_routes.len() {
            if mapped_source(s).is_none() {
                old.commit_ahead(s);
            }
        }
        // Lines in progress that have nowhere to continue are passed on as
        // they are: their route changed, or their source is not the same
        // stream any more (a restarted process).
        for r in 0..old.routes.len() {
            for position in 0..old.routes[r].sources.len() {
                let source = old.routes[r].sources[position];
                if map.routes[r].is_none() || mapped_source(source).is_none() {
                    old.flush_partial(r, position);
                }
            }
        }
        // The lanes of a carried route keep their ids.
        let mut kept: Vec<Vec<Option<LaneId>>> =
            routes.iter().map(|r| vec![None; r.sinks.len()]).collect();
        let mut keeps = vec![false; old.lanes.len()];
        for (r, route) in old.routes.iter().enumerate() {
            let Some(new_route) = map.routes[r] else {
                continue;
            };
            for &l in &route.lanes {
                let Some(sink) = mapped_sink(old.lanes[l].sink) else {
                    continue;
                };
                let position = routes[new_route].sinks.iter().position(|&k| k == sink);
                if let Some(slot) = position.map(|p| &mut kept[new_route][p])
                    && slot.is_none()
                {
                    *slot = Some(l);
                    keeps[l] = true;
                }
            }
        }
        let free = (0..old.lanes.len()).rev().filter(|&l| !keeps[l]).collect();
        let mut relay = Relay::build(routes, sources, sinks, &kept, old.lanes.len(), free);
        for &l in kept.iter().flatten().flatten() {
            let fresh = std::mem::replace(&mut relay.lanes[l], Lane::retired());
            let mut lane = std::mem::replace(&mut old.lanes[l], Lane::retired());
            lane.route = fresh.route;
            lane.sink = fresh.sink;
            lane.capacity = fresh.capacity;
            lane.policy = fresh.policy;
            // Only a lead on a stream that goes on is left (see above).
            lane.ahead_from = mapped_source(lane.ahead_from).unwrap_or(0);
            if lane.mid_line {
                relay.sink_owner[lane.sink] = Some(l);
            }
            relay.lanes[l] = lane;
        }

        // A lane with a line partly written goes first: its sink must see
        // the rest of that line before anything else.
        let mut order: Vec<LaneId> = (0..old.lanes.len())
            .filter(|&l| !keeps[l] && !old.lanes[l].is_retired())
            .collect();
        order.sort_by_key(|&l| old.sink_owner[old.lanes[l].sink] != Some(l));
        let mut leftovers: Vec<(SinkId, Vec<u8>)> = Vec::new();
        for l in order {
            let lane = &old.lanes[l];
            // The rest of a line the sink is in the middle of goes, where
            // it can, to a line lane, which keeps the sink until the line
            // is whole.
            let fits = |t: LaneId| !lane.mid_line || relay.lanes[t].lines;
            let target = mapped_sink(lane.sink).and_then(|sink| {
                let shares_source = |t: LaneId| {
                    old.routes[lane.route].sources.iter().any(|&s| {
                        mapped_source(s).is_some_and(|n| {
                            relay.routes[relay.lanes[t].route].sources.contains(&n)
                        })
                    })
                };
                let lanes = &relay.sink_lanes[sink];
                let first = |ok: &dyn Fn(LaneId) -> bool| lanes.iter().copied().find(|&t| ok(t));
                first(&|t| fits(t) && shares_source(t))
                    .or_else(|| first(&fits))
                    .or_else(|| first(&shares_source))
                    .or_else(|| lanes.first().copied())
            });
            let Some(target) = target else {
                if !lane.held.is_empty() {
                    leftovers.push((lane.sink, lane.held.iter().copied().collect()));
                }
                continue;
            };
            debug_assert_eq!(
                lane.piped, 0,
                "a lane that is not carried whole was unpiped"
            );
            let from = std::mem::take(&mut old.lanes[l].held);
            let lane = &old.lanes[l];
            let into = &mut relay.lanes[target];
            into.stats.accepted += from.len() as u64;
            if into.lines {
                into.stats.lines_accepted += from.iter().filter(|&&b| b == b'\n').count() as u64;
            }
            // An end a drop moved the front past is due at once.
            let ends = lane.ends.iter().map(|&end| end.saturating_sub(lane.front));
            if lane.mid_line {
                // Before what the lane has: the sink is in the middle of
                // one of these lines.
                debug_assert_eq!(into.piped, 0, "a lane that takes bytes first was unpiped");
                let n = from.len() as u64;
                let front = into.front;
                for end in &mut into.ends {
                    *end += n;
                }
                for end in ends.rev() {
                    into.ends.push_front(front + end);
                }
                for &b in from.iter().rev() {
                    into.held.push_front(b);
                }
                // A byte lane has no lines to finish: it never holds a sink.
                if into.lines {
                    into.mid_line = true;
                    relay.sink_owner[into.sink] = Some(target);
                }
            } else {
                let base = into.front + into.held() as u64;
                into.ends.extend(ends.map(|end| base + end));
                into.held.extend(from);
            }
            // One slice, so that the sink is offered it in one write.
            into.held.make_contiguous();
        }
        for (r, mut route) in old.routes.into_iter().enumerate() {
            let Some(new_route) = map.routes[r] else {
                continue;
            };
            relay.routes[new_route].long_lines += route.long_lines;
            for (position, &source) in route.sources.iter().enumerate() {
                let Some(new_source) = mapped_source(source) else {
                    continue;
                };
                let into = &mut relay.routes[new_route];
                if let Some(p) = into.sources.iter().position(|&s| s == new_source) {
                    into.ended[p] = route.ended[position];
                    into.in_long_line[p] = route.in_long_line[position];
                    into.partial[p] = std::mem::take(&mut route.partial[position]);
                }
            }
        }
        (relay, leftovers)
    }
}
