//! Rate-limited drop messages: each lane's new drops are logged at once,
//! then at most once per `DROP_LOG_INTERVAL` while they go on.

use std::time::Instant;

use log::warn;

use super::{DROP_LOG_INTERVAL, Daemon};
use crate::config::WhenFull;
use crate::relay::{LaneId, Relay, SinkId};

/// Rate-limiting of drop messages for one lane.
#[derive(Debug, Default, Clone)]
struct DropLog {
    reported: u64,
    last: Option<Instant>,
    due: Option<Instant>,
}

/// By lane id, like the relay's lanes.
#[derive(Debug, Default)]
pub(super) struct DropLogs {
    lanes: Vec<DropLog>,
}

impl DropLogs {
    /// Logs for `relay`'s lanes, none of which has dropped anything yet.
    pub(super) fn new(relay: &Relay) -> DropLogs {
        let mut logs = DropLogs::default();
        logs.follow(relay, |_| false);
        logs
    }

    /// After a reload: a lane that stays keeps its log; a new one (or a
    /// lane id taken by a new lane) starts from what it has dropped so far,
    /// which was logged where it happened.
    pub(super) fn follow(&mut self, relay: &Relay, kept: impl Fn(LaneId) -> bool) {
        self.lanes
            .resize_with(relay.lanes().len(), DropLog::default);
        for (l, log) in self.lanes.iter_mut().enumerate() {
            if !kept(l) {
                *log = DropLog {
                    reported: relay.lanes()[l].stats().dropped,
                    ..DropLog::default()
                };
            }
        }
    }

    /// When a rate-limited message is due next.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.lanes.iter().filter_map(|d| d.due).min()
    }

    /// The lanes whose message is due by `now`.
    pub(super) fn due(&self, now: Instant) -> Vec<LaneId> {
        (0..self.lanes.len())
            .filter(|&l| self.lanes[l].due.is_some_and(|due| due <= now))
            .collect()
    }

    /// Whether lane `l`, having dropped `dropped` in all, has drops not
    /// logged yet.
    fn unreported(&self, l: LaneId, dropped: u64) -> bool {
        self.lanes.get(l).is_some_and(|log| dropped > log.reported)
    }

    /// Whether a message for lane `l` may go now; if not, it is due later.
    fn may_log(&mut self, l: LaneId, now: Instant) -> bool {
        let Some(log) = self.lanes.get_mut(l) else {
            return false;
        };
        match log.last {
            Some(last) if now < last + DROP_LOG_INTERVAL => {
                log.due = Some(last + DROP_LOG_INTERVAL);
                false
            }
            _ => true,
        }
    }

    /// Records that lane `l`'s drops up to `dropped` are logged now;
    /// returns how many are new.
    fn logged(&mut self, l: LaneId, dropped: u64, now: Instant) -> u64 {
        let Some(log) = self.lanes.get_mut(l) else {
            return 0;
        };
        let new = dropped.saturating_sub(log.reported);
        *log = DropLog {
            reported: dropped,
            last: Some(now),
            due: None,
        };
        new
    }
}

impl Daemon {
    pub(super) fn note_drops_of_sink(&mut self, k: SinkId) {
        for i in 0..self.relay.lanes_of_sink(k).len() {
            let l = self.relay.lanes_of_sink(k)[i];
            if self
                .drop_logs
                .unreported(l, self.relay.lanes()[l].stats().dropped)
                && self.drop_logs.may_log(l, Instant::now())
            {
                self.log_drops(l, Instant::now());
            }
        }
    }

    /// Logs lane `l`'s new drops, if any.
    pub(super) fn log_drops(&mut self, l: LaneId, now: Instant) {
        let lane = &self.relay.lanes()[l];
        let total = lane.stats().dropped;
        let new = self.drop_logs.logged(l, total, now);
        if new > 0 {
            // A blocking lane drops only what a sink that went away held,
            // which is logged where that happens.
            let why = match lane.policy() {
                WhenFull::Block => String::new(),
                policy => format!(" (when_full = {policy})"),
            };
            warn!(
                "{}: dropped {new} bytes{why}; {total} dropped in total",
                self.lane_name(l)
            );
        }
    }

    /// Logs what every lane dropped and has not said yet (before a reload).
    pub(super) fn flush_drop_logs(&mut self) {
        let now = Instant::now();
        let unreported: Vec<LaneId> = self
            .relay
            .live_lanes()
            .filter(|(l, lane)| self.drop_logs.unreported(*l, lane.stats().dropped))
            .map(|(l, _)| l)
            .collect();
        for l in unreported {
            self.log_drops(l, now);
        }
    }

    pub(super) fn lane_name(&self, l: LaneId) -> String {
        let lane = &self.relay.lanes()[l];
        let route = self
            .config
            .routes
            .get(lane.route)
            .map_or_else(|| format!("route[{}]", lane.route), |r| r.name.clone());
        format!("{route} -> {}", self.sinks[lane.sink].name)
    }
}
