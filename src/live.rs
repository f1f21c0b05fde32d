//! `fifod status --watch`: the status again and again, with rates.
//!
//! On a terminal the view is redrawn in place at every interval; anywhere
//! else (a file, a pipe, a log) each snapshot is printed after the one
//! before, so that nothing is overwritten. Rates are per second, from the
//! counters of two snapshots in a row.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::control::{self, QueryError, Status, human_bytes};

/// Clears a terminal and puts the cursor at its top left.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// The counters of one sink of one route, as last seen.
#[derive(Debug, Clone, Copy)]
struct Seen {
    produced: u64,
    delivered: u64,
    dropped: u64,
}

/// Every sink's counters in a snapshot, by (route, sink).
type Snapshot = HashMap<(String, String), Seen>;

/// Shows the status of the daemon at `socket` every `interval` until it
/// stops answering. JSON: one compact document a line.
pub fn watch(socket: &Path, interval: Duration, json: bool) -> ExitCode {
    let terminal = std::io::stdout().is_terminal();
    let mut before: Option<(Instant, Snapshot)> = None;
    let mut answered = false;
    loop {
        let status = match control::query_peer(socket, Duration::from_secs(5)) {
            Ok((mut status, daemon)) => {
                control::peers::find(&mut status, daemon);
                status
            }
            Err(QueryError::NotRunning(why)) => {
                eprintln!("fifod is not running ({why})");
                return ExitCode::from(if answered { 0 } else { 3 });
            }
            Err(QueryError::Failed(why)) => {
                eprintln!("fifod status: {why}");
                return ExitCode::from(1);
            }
        };
        answered = true;
        let now = Instant::now();
        let text = if json {
            match serde_json::to_string(&status) {
                Ok(line) => line + "\n",
                Err(e) => {
                    eprintln!("fifod status: {e}");
                    return ExitCode::from(1);
                }
            }
        } else {
            let rates = rates(&status, before.as_ref().map(|(t, seen)| (now - *t, seen)));
            format!("{}\n{rates}", control::render(&status))
        };
        let mut out = std::io::stdout().lock();
        let shown = if terminal && !json {
            write!(out, "{CLEAR}{text}")
        } else if json {
            write!(out, "{text}")
        } else {
            writeln!(out, "{text}")
        };
        // A reader that went away (`| head`) ends the watch.
        if shown.and_then(|()| out.flush()).is_err() {
            return ExitCode::SUCCESS;
        }
        drop(out);
        before = Some((now, counters(&status)));
        std::thread::sleep(interval);
    }
}

fn counters(status: &Status) -> Snapshot {
    status
        .routes
        .iter()
        .flat_map(|r| {
            r.sinks.iter().map(move |s| {
                (
                    (r.label(), s.sink.clone()),
                    Seen {
                        produced: s.produced,
                        delivered: s.delivered,
                        dropped: s.dropped,
                    },
                )
            })
        })
        .collect()
}

/// The rates table: for every sink of every route, bytes per second in
/// (from its sources), out (delivered) and dropped since the snapshot
/// before, and what is held now. `-` before there is a snapshot to compare.
fn rates(status: &Status, before: Option<(Duration, &Snapshot)>) -> String {
    let mut out = String::new();
    if status.routes.is_empty() {
        return out;
    }
    let per_second = |now: u64, then: Option<u64>, elapsed: Duration| match then {
        // A counter that went back: the route was replaced by a reload.
        Some(then) if now >= then && elapsed > Duration::ZERO => {
            format!(
                "{}/s",
                human_bytes(((now - then) as f64 / elapsed.as_secs_f64()) as u64)
            )
        }
        _ => "-".to_string(),
    };
    let mut rows = Vec::new();
    for r in &status.routes {
        for s in &r.sinks {
            let name = r.label();
            let (elapsed, then) = match before {
                Some((elapsed, seen)) => (elapsed, seen.get(&(name.clone(), s.sink.clone()))),
                None => (Duration::ZERO, None),
            };
            rows.push(vec![
                name,
                s.sink.clone(),
                per_second(s.produced, then.map(|t| t.produced), elapsed),
                per_second(s.delivered, then.map(|t| t.delivered), elapsed),
                per_second(s.dropped, then.map(|t| t.dropped), elapsed),
                human_bytes(s.held),
            ]);
        }
    }
    control::table(
        &mut out,
        &["ROUTE", "TO", "IN", "OUT", "DROPPED", "HELD"],
        &rows,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{RouteStatus, SinkStatus};

    fn status(delivered: u64) -> Status {
        Status {
            version: 1,
            pid: 1,
            uptime_seconds: 1.0,
            dir: "/run/fifod".into(),
            state: "running".into(),
            last_reload: None,
            reload_requests: 0,
            upgrades: 0,
            upgrade_failures: 0,
            upgrade_error: None,
            processes_not_visible: None,
            fifos: Vec::new(),
            processes: Vec::new(),
            routes: vec![RouteStatus {
                index: 0,
                name: "feed".into(),
                from: vec!["in".into()],
                to: vec!["out".into()],
                framing: "bytes".into(),
                when_full: "block".into(),
                eof: "hold".into(),
                long_lines: 0,
                sinks: vec![SinkStatus {
                    sink: "out".into(),
                    produced: delivered + 10,
                    delivered,
                    held: 10,
                    dropped: 0,
                    lines: None,
                }],
            }],
        }
    }

    #[test]
    fn rates_come_from_two_snapshots_in_a_row() {
        let first = status(0);
        let table = rates(&first, None);
        assert!(
            table.contains("feed   out  -   -    -        10 B"),
            "{table}"
        );
        let seen = counters(&first);
        let second = status(2048);
        let table = rates(&second, Some((Duration::from_secs(2), &seen)));
        assert!(table.contains("1.0 KiB/s"), "{table}");
    }
}
