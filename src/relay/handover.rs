//! What a relay holds in memory, handed to the next fifod by `fifod
//! upgrade`: each lane's held bytes (behind what its pipe holds, which goes
//! as the pipe), each source's line in progress, and which lane a sink is
//! in the middle of a line of.

use super::{LaneId, Relay, SinkId, SourceId};

/// A lane's bytes in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBytes {
    pub lane: LaneId,
    pub bytes: Vec<u8>,
    /// The sink has the first part of a line whose rest is here.
    pub mid_line: bool,
}

/// A source's line in progress on a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineInProgress {
    pub route: usize,
    pub source: SourceId,
    pub bytes: Vec<u8>,
    /// It already went on in pieces.
    pub long: bool,
}

impl Relay {
    /// Every lane's bytes in memory.
    pub fn held_in_memory(&self) -> Vec<HeldBytes> {
        self.live_lanes()
            .filter(|(_, lane)| !lane.held.is_empty() || lane.mid_line)
            .map(|(l, lane)| HeldBytes {
                lane: l,
                bytes: lane.held.iter().copied().collect(),
                mid_line: lane.mid_line,
            })
            .collect()
    }

    /// Every source's line in progress.
    pub fn lines_in_progress(&self) -> Vec<LineInProgress> {
        let mut lines = Vec::new();
        for (r, route) in self.routes.iter().enumerate() {
            for (position, partial) in route.partial.iter().enumerate() {
                if !partial.is_empty() {
                    lines.push(LineInProgress {
                        route: r,
                        source: route.sources[position],
                        bytes: partial.clone(),
                        long: route.in_long_line[position],
                    });
                }
            }
        }
        lines
    }

    /// The lane each sink is in the middle of a line of.
    pub fn sink_owners(&self) -> Vec<(SinkId, LaneId)> {
        self.sink_owner
            .iter()
            .enumerate()
            .filter_map(|(k, owner)| Some((k, (*owner)?)))
            .collect()
    }

    /// Takes back bytes a lane held in memory in the fifod before: behind
    /// what its pipe holds, counted as accepted.
    pub fn restore_held(&mut self, held: &HeldBytes) {
        let lane = &mut self.lanes[held.lane];
        lane.stats.accepted += held.bytes.len() as u64;
        if lane.lines {
            lane.stats.lines_accepted += super::lane::newlines(&held.bytes);
        }
        lane.held.extend(&held.bytes);
        lane.mid_line = held.mid_line && lane.lines;
    }

    /// Takes back a source's line in progress on route `route`. False if
    /// the source does not feed it now.
    pub fn restore_line(&mut self, line: &LineInProgress) -> bool {
        let Some(&(_, position)) = self.source_routes[line.source]
            .iter()
            .find(|&&(r, _)| r == line.route)
        else {
            return false;
        };
        let route = &mut self.routes[line.route];
        if route.max_line.is_none() {
            return false;
        }
        route.partial[position].extend_from_slice(&line.bytes);
        route.in_long_line[position] = line.long;
        true
    }

    /// Gives `sink` to `lane` until the line it is in the middle of ends.
    pub fn restore_owner(&mut self, sink: SinkId, lane: LaneId) {
        if self.lanes[lane].sink == sink && self.lanes[lane].mid_line {
            self.sink_owner[sink] = Some(lane);
        }
    }
}
