//! Line routes whose sources fifod keeps in a log (`daemon::line_log`, with
//! an fd store): the daemon frames the lines itself and writes whole runs of
//! them into the lanes' pipes; the relay decides whether a source may go
//! that way and counts what went where.

use crate::config::WhenFull;

use super::lane::newlines;
use super::{LaneId, Relay, SourceId};

impl Relay {
    /// Whether `source`'s lines may go through a log: every route it feeds
    /// frames lines, none of their lanes drops its oldest (that needs the
    /// lines in memory) nor holds anything in memory, and the source has
    /// no line in progress here (its next byte starts a line). Then the
    /// routes' shortest `max_line`.
    pub fn log_max_line(&self, source: SourceId) -> Option<usize> {
        let mut max_line = usize::MAX;
        for &(r, position) in &self.source_routes[source] {
            let route = &self.routes[r];
            max_line = max_line.min(route.max_line?);
            if !route.partial[position].is_empty() {
                return None;
            }
            for &l in &route.lanes {
                let lane = &self.lanes[l];
                if lane.policy == WhenFull::DropOldest || !lane.held.is_empty() || lane.ahead() > 0
                {
                    return None;
                }
            }
        }
        (max_line < usize::MAX).then_some(max_line)
    }

    /// The lanes `source` feeds.
    pub fn lanes_fed_by(&self, source: SourceId) -> Vec<LaneId> {
        self.source_routes[source]
            .iter()
            .flat_map(|&(r, _)| self.routes[r].lanes.iter().copied())
            .collect()
    }

    /// Records a run of whole lines (or a piece of a long one) written
    /// into `lane`'s pipe.
    pub fn piped_run(&mut self, lane: LaneId, run: &[u8]) {
        let lane = &mut self.lanes[lane];
        let lines = newlines(run);
        lane.piped += run.len();
        lane.stats.accepted += run.len() as u64;
        lane.stats.lines_accepted += lines;
        lane.piped_runs.push_back((run.len(), lines));
    }

    /// Records a run `lane` dropped for want of room (`drop-newest`).
    pub fn dropped_run(&mut self, lane: LaneId, run: &[u8]) {
        let lane = &mut self.lanes[lane];
        let lines = newlines(run);
        lane.stats.accepted += run.len() as u64;
        lane.stats.dropped += run.len() as u64;
        lane.stats.lines_accepted += lines;
        lane.stats.lines_dropped += lines;
    }

    /// Counts a line that goes on in pieces on every route of `source`.
    pub fn long_line_from(&mut self, source: SourceId) {
        for i in 0..self.source_routes[source].len() {
            let (r, _) = self.source_routes[source][i];
            self.routes[r].long_lines += 1;
        }
    }

    /// How many runs `lane`'s pipe holds, and how many bytes at its front
    /// came back after a crash (written in runs unknown).
    pub fn pipe_runs(&self, lane: LaneId) -> (usize, usize) {
        let lane = &self.lanes[lane];
        (lane.piped_runs.len(), lane.recovered)
    }

    /// Holds in memory the rest of a run `lane`'s pipe did not take: it
    /// finishes a line the pipe has begun, so no policy drops it.
    pub fn held_rest(&mut self, lane: LaneId, rest: &[u8]) {
        let lane = &mut self.lanes[lane];
        lane.stats.accepted += rest.len() as u64;
        lane.stats.lines_accepted += newlines(rest);
        lane.held.extend(rest);
    }
}
