//! Everything the loop does at a time rather than on an event: when it
//! must wake up next, and what is due when it does. An idle daemon has no
//! deadline at all, so `epoll_wait` sleeps until an event.

use std::time::{Duration, Instant};

use log::debug;

use super::{DRAIN_POLL, Daemon, State};
use crate::control::ControlServer;
use crate::relay::SinkId;

impl Daemon {
    /// How long the loop may sleep: until the earliest deadline of any
    /// part, or for ever.
    pub(super) fn next_timeout(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut next = self.drop_logs.next_due();
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        };
        for child in &self.children {
            consider(child.restart_at);
        }
        for &k in &self.ending {
            consider(self.sinks[k].end_check.map(|(at, _)| at));
        }
        consider(self.control.as_ref().and_then(ControlServer::next_deadline));
        consider(self.control_retry_at);
        consider(self.notifier.next_deadline());
        consider(self.retiring.next_deadline());
        consider(self.replaced.next_deadline());
        match self.state {
            State::Draining { deadline, .. } => {
                consider(Some(deadline));
                consider(Some(now + DRAIN_POLL));
            }
            State::Killing { next, .. } => consider(Some(next)),
            State::Running | State::Done => {}
        }
        next.map(|at| at.saturating_duration_since(now))
    }

    pub(super) fn on_timers(&mut self) {
        let now = Instant::now();
        for l in self.drop_logs.due(now) {
            self.log_drops(l, now);
        }
        let due: Vec<SinkId> = self
            .ending
            .iter()
            .copied()
            .filter(|&k| self.sinks[k].end_check.is_some_and(|(at, _)| at <= now))
            .collect();
        for k in due {
            self.flush(k);
        }
        if self.control_retry_at.is_some_and(|at| at <= now) {
            self.resume_control();
        }
        if let Some(control) = &mut self.control {
            for slot in control.expired(now) {
                debug!("dropping a status client that did not read its answer");
                control.close(slot);
            }
        }
        self.control_has_room();
        if self.state == State::Running {
            for c in 0..self.children.len() {
                if self.children[c].restart_at.is_some_and(|at| at <= now) {
                    self.start_child(c);
                }
            }
        }
        self.notifier.on_timer(now);
        self.retiring.tend(now);
        self.replaced.kill_due(now, false);
        if self.notifier.status_due(now) && self.state == State::Running {
            self.offer_status();
        }
        self.advance_shutdown(now);
    }
}
