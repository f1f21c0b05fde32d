//! The daemon's log: its messages, the processes it started and saw exit,
//! reload outcomes, and the final stats lines.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::{Daemon, TIMEOUT, wait_until};

/// The messages of the log (what follows `[time LEVEL target] `, or the
/// `<N>` of journald's format).
pub fn messages(log: &str) -> Vec<&str> {
    log.lines()
        .filter_map(|l| {
            let (open, close) = if l.starts_with('<') {
                ('<', ">")
            } else {
                ('[', "] ")
            };
            let l = l.strip_prefix(open)?;
            let at = l.find(close)?;
            Some(&l[at + close.len()..])
        })
        .collect()
}

/// Pids of `started process NAME (pid N)`, in order.
pub fn started_pids(log: &str, name: &str) -> Vec<i32> {
    let prefix = format!("started process {name} (pid ");
    messages(log)
        .iter()
        .filter_map(|m| m.strip_prefix(&prefix))
        .map(|rest| {
            rest.trim_end_matches(')')
                .parse()
                .unwrap_or_else(|_| panic!("bad pid in {rest:?}"))
        })
        .collect()
}

/// `process NAME (pid N) <how>` messages, as (pid, how), in order.
pub fn exits(log: &str, name: &str) -> Vec<(i32, String)> {
    let prefix = format!("process {name} (pid ");
    messages(log)
        .iter()
        .filter_map(|m| m.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (pid, how) = rest.split_once(") ")?;
            Some((pid.parse().ok()?, how.to_string()))
        })
        .collect()
}

/// Waits (deadline) until `cond` holds on the daemon's log; returns the log.
pub fn wait_log(d: &Daemon, what: &str, timeout: Duration, cond: impl Fn(&str) -> bool) -> String {
    let mut log = String::new();
    if wait_until(timeout, || {
        log = d.log();
        cond(&log)
    }) {
        return log;
    }
    panic!("timed out waiting for {what}\n--- log ---\n{}", d.log());
}

/// The outcomes of the reloads so far, in order: `Ok(())` for `reload
/// complete`, `Err(why)` for `reload failed: why`.
pub fn reload_outcomes(log: &str) -> Vec<Result<(), String>> {
    messages(log)
        .into_iter()
        .filter_map(|m| {
            if m == "reload complete" {
                Some(Ok(()))
            } else {
                m.strip_prefix("reload failed: ")
                    .map(|why| Err(why.to_string()))
            }
        })
        .collect()
}

impl Daemon {
    /// Sends SIGHUP and waits (deadline `TIMEOUT`) for the reload's outcome
    /// in the log: `Ok(())` once it completed, `Err(why)` if it failed.
    pub fn reload(&self) -> Result<(), String> {
        let before = reload_outcomes(&self.log()).len();
        self.signal(Signal::SIGHUP);
        let log = wait_log(self, "the reload's outcome", TIMEOUT, |log| {
            reload_outcomes(log).len() > before
        });
        reload_outcomes(&log).swap_remove(before)
    }

    /// Writes `toml` as the config (see `Sandbox::write_config`), reloads,
    /// and panics with the log unless the reload completed.
    pub fn reload_ok(&self, toml: &str) {
        self.sb.write_config(toml);
        if let Err(why) = self.reload() {
            panic!("reload failed: {why}\n--- log ---\n{}", self.log());
        }
    }
}

/// A line of `log` that contains all of `needles`.
pub fn log_has_line(log: &str, needles: &[&str]) -> bool {
    log.lines().any(|l| needles.iter().all(|n| l.contains(n)))
}

/// Panics with the daemon's log unless it has a line with all of `needles`.
pub fn assert_logged(log: &str, needles: &[&str]) {
    assert!(
        log_has_line(log, needles),
        "no line with {needles:?}\n--- log ---\n{log}"
    );
}

/// `stats route[N] -> SINK: accepted=A delivered=D dropped=X undelivered=U`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub accepted: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub undelivered: u64,
}

/// Finds the single stats line for (route, sink) and parses it exactly.
pub fn parse_stats(log: &str, route: usize, sink: &str) -> Stats {
    let prefix = format!("stats route[{route}] -> {sink}: ");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&prefix)).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one line containing {prefix:?}\n--- log ---\n{log}"
    );
    let line = lines[0];
    let rest = &line[line.find(&prefix).unwrap() + prefix.len()..];
    let fields: Vec<&str> = rest.trim_end().split(' ').collect();
    let keys = ["accepted", "delivered", "dropped", "undelivered"];
    assert_eq!(fields.len(), 4, "malformed stats line {line:?}");
    let mut vals = [0u64; 4];
    for (i, (field, key)) in fields.iter().zip(keys).enumerate() {
        let v = field
            .strip_prefix(key)
            .and_then(|s| s.strip_prefix('='))
            .unwrap_or_else(|| panic!("malformed stats line {line:?}: expected {key}="));
        vals[i] = v
            .parse()
            .unwrap_or_else(|_| panic!("malformed number in stats line {line:?}"));
    }
    let s = Stats {
        accepted: vals[0],
        delivered: vals[1],
        dropped: vals[2],
        undelivered: vals[3],
    };
    assert_eq!(
        s.accepted,
        s.delivered + s.dropped + s.undelivered,
        "stats do not add up: {line:?}"
    );
    s
}

impl Stats {
    /// (accepted, delivered, dropped, undelivered).
    pub fn as_tuple(&self) -> (u64, u64, u64, u64) {
        (
            self.accepted,
            self.delivered,
            self.dropped,
            self.undelivered,
        )
    }
}

/// Panics with `log` unless its stats line for (route, sink) says
/// (accepted, delivered, dropped, undelivered) = `expected`.
pub fn assert_stats_in(log: &str, route: usize, sink: &str, expected: (u64, u64, u64, u64)) {
    assert_eq!(
        parse_stats(log, route, sink).as_tuple(),
        expected,
        "stats route[{route}] -> {sink} (accepted, delivered, dropped, undelivered)\n--- log ---\n{log}"
    );
}

/// The daemon's final stats for (route, sink) are `expected`.
pub fn assert_stats(d: &Daemon, route: usize, sink: &str, expected: (u64, u64, u64, u64)) {
    assert_stats_in(&d.log(), route, sink, expected);
}

/// The daemon's final stats for (route, sink): all `n` bytes accepted and
/// delivered, none dropped or left.
pub fn assert_clean_stats(d: &Daemon, route: usize, sink: &str, n: u64) {
    assert_stats(d, route, sink, (n, n, 0, 0));
}
