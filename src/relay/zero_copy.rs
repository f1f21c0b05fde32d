//! Zero-copy bookkeeping: which lanes may take a source's bytes through
//! `splice`/`tee`, what those transfers moved, and bytes that lanes got
//! ahead of their source.

use crate::config::WhenFull;

use super::{Lane, LaneId, Relay, SinkId, SourceId, Target, Took};

impl Relay {
    /// The lanes `source` feeds and where each may take its bytes without
    /// them passing through fifod (`splice`/`tee`), if every lane can: byte
    /// routes only, none ahead of the source, and each lane either idle with
    /// an idle sink (`Target::Sink`) or allowed a pipe with nothing of its
    /// own in memory (`Target::Pipe`).
    pub fn zero_copy_lanes(&self, source: SourceId) -> Option<Vec<(LaneId, SinkId, Target)>> {
        self.plan(source, false)
    }

    /// `zero_copy_lanes`, where a lane that is ahead of `source` in its
    /// pipe alone sits the transfer out (`Target::Skip`) instead of making
    /// the copying path run: with an fd store, bytes do not wait in memory.
    pub fn zero_copy_lanes_skipping(
        &self,
        source: SourceId,
    ) -> Option<Vec<(LaneId, SinkId, Target)>> {
        self.plan(source, true)
    }

    fn plan(&self, source: SourceId, skip_ahead: bool) -> Option<Vec<(LaneId, SinkId, Target)>> {
        let mut lanes = Vec::new();
        for &(r, _) in &self.source_routes[source] {
            let route = &self.routes[r];
            if route.max_line.is_some() {
                return None;
            }
            for &l in &route.lanes {
                let lane = &self.lanes[l];
                if skip_ahead
                    && lane.ahead_from == source
                    && lane.ahead_sent == 0
                    && lane.ahead_piped > 0
                {
                    lanes.push((l, lane.sink, Target::Skip));
                    continue;
                }
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
    pub(super) fn make_room(&mut self, lane: LaneId, n: usize) -> usize {
        let lane = &mut self.lanes[lane];
        let excess = n
            .min(lane.capacity)
            .saturating_sub(lane.free())
            .min(lane.held());
        lane.drop_front(excess);
        excess
    }

    /// How many bytes `lane` may take into its pipe now, for a transfer of
    /// up to `coming()` bytes: a `drop-oldest` lane first drops its oldest
    /// to make room for them (what it drops from its pipe is then
    /// unwanted), the others have the room they have. `coming` is asked
    /// only where the policy needs it.
    pub fn room_for(&mut self, lane: LaneId, coming: impl FnOnce() -> usize) -> usize {
        if self.lanes[lane].policy == WhenFull::DropOldest {
            self.make_room(lane, coming());
        }
        self.room(lane)
    }

    /// How many bytes a `tee` to `lanes` copies, of the `queued` in the
    /// source, at most `budget`: a `drop-oldest` lane keeps at most its
    /// buffer of them, the oldest first, and what comes after is taken
    /// the next time.
    pub fn tee_len(
        &self,
        lanes: &[(LaneId, SinkId, Target)],
        budget: usize,
        queued: usize,
    ) -> usize {
        lanes
            .iter()
            .map(|&(l, _, _)| &self.lanes[l])
            .filter(|lane| lane.policy == WhenFull::DropOldest)
            .map(|lane| lane.capacity)
            .fold(budget.min(queued), usize::min)
    }

    /// Of `offered` bytes of the source, `lane` took `took` (into its sink
    /// and its pipe) while it had room for `want`: how many may be
    /// consumed from the source for it. Those it took; or all of them for
    /// a full `drop-newest` lane, which drops the rest.
    pub fn consumable(&self, lane: LaneId, took: usize, want: usize, offered: usize) -> usize {
        if self.lanes[lane].policy == WhenFull::DropNewest && took == want {
            offered
        } else {
            took
        }
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
            if t == Took::default() && lane.ahead_from == source && lane.ahead_piped > 0 {
                // A lane that sat out: its pipe had the consumed bytes.
                let n = consumed.min(lane.ahead_piped);
                lane.ahead_piped -= n;
                lane.piped += n;
                lane.stats.accepted += n as u64;
                continue;
            }
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

    /// How many bytes of `source` `lane`'s pipe holds ahead of it (what
    /// the source still has and the lane got already).
    pub fn piped_ahead(&self, lane: LaneId, source: SourceId) -> usize {
        let lane = &self.lanes[lane];
        if lane.ahead_from == source {
            lane.ahead_piped
        } else {
            0
        }
    }

    /// Records that of the bytes in `lane`'s pipe taken back after a
    /// crash (`recovered_pipe`), the last `n` are ahead of `source`: the
    /// source still has them (a fan-out stopped mid-transfer).
    pub fn recovered_ahead(&mut self, lane: LaneId, source: SourceId, n: usize) {
        let lane = &mut self.lanes[lane];
        let n = n.min(lane.piped);
        lane.piped -= n;
        lane.stats.accepted -= n as u64;
        lane.ahead_sent = 0;
        lane.ahead_piped = n;
        lane.ahead_from = source;
    }
}
