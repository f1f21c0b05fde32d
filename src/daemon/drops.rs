//! Rate-limited drop messages.

use super::*;

impl Daemon {
    pub(super) fn note_drops_of_sink(&mut self, k: SinkId) {
        let lanes: Vec<LaneId> = self.relay.lanes_of_sink(k).to_vec();
        for l in lanes {
            if self.relay.lanes()[l].stats().dropped > self.drop_logs[l].reported {
                self.note_drops(l);
            }
        }
    }

    /// Logs new drops on a lane, at most once per `DROP_LOG_INTERVAL`.
    pub(super) fn note_drops(&mut self, l: LaneId) {
        let now = Instant::now();
        let log = &mut self.drop_logs[l];
        match log.last {
            Some(last) if now < last + DROP_LOG_INTERVAL => {
                log.due = Some(last + DROP_LOG_INTERVAL);
            }
            _ => self.log_drops(l, now),
        }
    }

    pub(super) fn log_drops(&mut self, l: LaneId, now: Instant) {
        let lane = &self.relay.lanes()[l];
        let total = lane.stats().dropped;
        let log = &mut self.drop_logs[l];
        let new = total - log.reported;
        log.reported = total;
        log.last = Some(now);
        log.due = None;
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

    pub(super) fn lane_name(&self, l: LaneId) -> String {
        let lane = &self.relay.lanes()[l];
        format!("route[{}] -> {}", lane.route, self.sinks[lane.sink].name)
    }
}
