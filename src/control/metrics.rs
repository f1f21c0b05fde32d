//! `fifod status --format prometheus`: the status document in Prometheus's
//! text exposition format (version 0.0.4), as node_exporter's textfile
//! collector reads it. Every family has its `# HELP` and `# TYPE`; names
//! follow Prometheus's conventions (`fifod_` first, base units, `_total`
//! on counters); samples carry no timestamp. A family without samples
//! (line counts without a line route, say) is left out.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use super::Status;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// One metric family being written.
#[derive(Debug)]
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, String)>,
}

impl Family {
    fn new(name: &'static str, kind: Kind, help: &'static str) -> Family {
        Family {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    fn sample(&mut self, labels: &[(&'static str, &str)], value: impl ToString) {
        let labels = labels.iter().map(|&(k, v)| (k, v.to_string())).collect();
        self.samples.push((labels, value.to_string()));
    }

    fn write(&self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        let kind = match self.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} {kind}", self.name);
        for (labels, value) in &self.samples {
            out.push_str(self.name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (key, text)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{key}=\"{}\"", escape_label(text));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {value}");
        }
    }
}

/// A label value: `\`, `"` and newline escaped.
fn escape_label(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A `# HELP` text: `\` and newline escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// The process states a document knows, each always given a sample.
const PROCESS_STATES: [&str; 3] = ["running", "restarting", "stopped"];

/// `status` in the text format. `now` dates the daemon's start from its
/// uptime.
pub fn render(status: &Status, now: SystemTime) -> String {
    use Kind::{Counter, Gauge};
    let mut families = Vec::new();

    let mut start = Family::new(
        "fifod_start_time_seconds",
        Gauge,
        "When fifod started, in seconds since the Unix epoch, to the second (the clock of fifod status less fifod's uptime).",
    );
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    start.sample(&[], (now - status.uptime_seconds).round());
    families.push(start);
    let mut uptime = Family::new("fifod_uptime_seconds", Gauge, "How long fifod has run.");
    uptime.sample(&[], status.uptime_seconds);
    families.push(uptime);

    let mut requests = Family::new(
        "fifod_reload_requests_total",
        Counter,
        "Reload requests (SIGHUPs) fifod took.",
    );
    requests.sample(&[], status.reload_requests);
    families.push(requests);
    let mut upgrades = Family::new(
        "fifod_upgrades_total",
        Counter,
        "Upgrades in place (fifod upgrade) since fifod was started.",
    );
    upgrades.sample(&[], status.upgrades);
    families.push(upgrades);
    let mut failures = Family::new(
        "fifod_upgrade_failures",
        Gauge,
        "Upgrades that failed since the last one that worked; fifod went on as it was.",
    );
    failures.sample(&[], status.upgrade_failures);
    families.push(failures);
    let mut success = Family::new(
        "fifod_last_reload_success",
        Gauge,
        "Whether the last reload succeeded (1) or failed and the config before it stays in force (0); absent before the first reload.",
    );
    let mut reloaded_at = Family::new(
        "fifod_last_reload_timestamp_seconds",
        Gauge,
        "When the last reload ended, in seconds since the Unix epoch; absent before the first reload.",
    );
    if let Some(last) = &status.last_reload {
        success.sample(&[], u8::from(last.ok));
        reloaded_at.sample(&[], last.at);
    }
    families.push(success);
    families.push(reloaded_at);

    let mut fifos = Family::new("fifod_fifos", Gauge, "FIFOs fifod manages.");
    fifos.sample(&[], status.fifos.len());
    let mut info = Family::new(
        "fifod_fifo_info",
        Gauge,
        "A FIFO's path, mode and role (input, output or unrouted); always 1.",
    );
    let mut bytes = Family::new(
        "fifod_fifo_bytes_total",
        Counter,
        "Bytes fifod read from an input FIFO or wrote into an output FIFO.",
    );
    let mut queued = Family::new(
        "fifod_fifo_queued_bytes",
        Gauge,
        "Bytes waiting in a FIFO's pipe.",
    );
    let mut readers = Family::new(
        "fifod_fifo_readers",
        Gauge,
        "Processes other than fifod that have a FIFO open for reading (read-write included), as far as the user of fifod status may see.",
    );
    let mut writers = Family::new(
        "fifod_fifo_writers",
        Gauge,
        "Processes other than fifod that have a FIFO open for writing (read-write included), as far as the user of fifod status may see.",
    );
    for f in &status.fifos {
        let fifo = [("fifo", f.name.as_str())];
        info.sample(
            &[
                ("fifo", &f.name),
                ("path", &f.path),
                ("mode", &f.mode),
                ("role", &f.role),
            ],
            1,
        );
        bytes.sample(&fifo, f.bytes);
        queued.sample(&fifo, f.queued);
        if let Some(peers) = &f.peers {
            readers.sample(&fifo, peers.iter().filter(|p| p.mode.reads()).count());
            writers.sample(&fifo, peers.iter().filter(|p| p.mode.writes()).count());
        }
    }
    families.extend([fifos, info, bytes, queued, readers, writers]);
    let mut hidden = Family::new(
        "fifod_peer_processes_not_visible",
        Gauge,
        "Processes whose open files fifod status could not look at (another user's, without privilege): fifod_fifo_readers and fifod_fifo_writers leave theirs out.",
    );
    if let Some(n) = status.processes_not_visible {
        hidden.sample(&[], n);
    }
    families.push(hidden);

    let mut processes = Family::new(
        "fifod_processes",
        Gauge,
        "Processes of the config by state: running, restarting (waiting to restart) or stopped.",
    );
    for state in PROCESS_STATES {
        let n = status.processes.iter().filter(|p| p.state == state).count();
        processes.sample(&[("state", state)], n);
    }
    let mut up = Family::new(
        "fifod_process_up",
        Gauge,
        "Whether a process of the config is running (1) or not (0).",
    );
    let mut restarts = Family::new(
        "fifod_process_restarts_total",
        Counter,
        "Times fifod restarted a process.",
    );
    for p in &status.processes {
        let process = [("process", p.name.as_str())];
        up.sample(&process, u8::from(p.state == "running"));
        restarts.sample(&process, p.restarts);
    }
    families.extend([processes, up, restarts]);

    let mut produced = Family::new(
        "fifod_route_produced_bytes_total",
        Counter,
        "Bytes a route's sources gave for a sink: delivered, held or dropped.",
    );
    let mut delivered = Family::new(
        "fifod_route_delivered_bytes_total",
        Counter,
        "Bytes a route wrote into a sink.",
    );
    let mut held = Family::new(
        "fifod_route_held_bytes",
        Gauge,
        "Bytes a route holds for a sink, a line in progress included.",
    );
    let mut dropped = Family::new(
        "fifod_route_dropped_bytes_total",
        Counter,
        "Bytes a route's when_full policy dropped for a sink.",
    );
    let mut produced_lines = Family::new(
        "fifod_route_produced_lines_total",
        Counter,
        "Lines a line route's sources gave for a sink: delivered, held or dropped.",
    );
    let mut delivered_lines = Family::new(
        "fifod_route_delivered_lines_total",
        Counter,
        "Lines a line route wrote into a sink.",
    );
    let mut held_lines = Family::new(
        "fifod_route_held_lines",
        Gauge,
        "Whole lines a line route holds for a sink.",
    );
    let mut dropped_lines = Family::new(
        "fifod_route_dropped_lines_total",
        Counter,
        "Lines a line route's when_full policy dropped for a sink.",
    );
    let mut long_lines = Family::new(
        "fifod_route_long_lines_total",
        Counter,
        "Lines longer than a line route's max_line, passed on in pieces.",
    );
    for r in &status.routes {
        let route = r.label();
        for s in &r.sinks {
            let labels = [("route", route.as_str()), ("sink", s.sink.as_str())];
            produced.sample(&labels, s.produced);
            delivered.sample(&labels, s.delivered);
            held.sample(&labels, s.held);
            dropped.sample(&labels, s.dropped);
            if let Some(lines) = &s.lines {
                produced_lines.sample(&labels, lines.produced);
                delivered_lines.sample(&labels, lines.delivered);
                held_lines.sample(&labels, lines.held);
                dropped_lines.sample(&labels, lines.dropped);
            }
        }
        if r.framing == "lines" {
            long_lines.sample(&[("route", &route)], r.long_lines);
        }
    }
    families.extend([
        produced,
        delivered,
        held,
        dropped,
        produced_lines,
        delivered_lines,
        held_lines,
        dropped_lines,
        long_lines,
    ]);

    let mut out = String::new();
    for family in &families {
        family.write(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::control::{
        Access, FifoStatus, LineCounts, Peer, ProcessStatus, ReloadStatus, RouteStatus,
        STATUS_VERSION, SinkStatus,
    };

    fn small() -> Status {
        Status {
            version: STATUS_VERSION,
            pid: 42,
            uptime_seconds: 90.25,
            dir: "/run/fifod".into(),
            state: "running".into(),
            last_reload: Some(ReloadStatus {
                at: 1_700_000_000,
                ok: false,
                error: Some("why".into()),
                errors: vec!["why".into()],
                changes: Vec::new(),
                answers: 2,
            }),
            reload_requests: 2,
            upgrades: 0,
            upgrade_failures: 0,
            upgrade_error: None,
            fifos: vec![
                FifoStatus {
                    name: "in".into(),
                    path: "/run/fifod/a \"quoted\" \\ path\nnext".into(),
                    mode: "0620".into(),
                    role: "input".into(),
                    peers: Some(vec![
                        Peer {
                            pid: 7,
                            command: "app".into(),
                            mode: Access::Write,
                        },
                        Peer {
                            pid: 8,
                            command: "both".into(),
                            mode: Access::ReadWrite,
                        },
                    ]),
                    bytes: 2048,
                    queued: 5,
                },
                FifoStatus {
                    name: "out".into(),
                    path: "/run/fifod/out".into(),
                    mode: "0640".into(),
                    role: "output".into(),
                    peers: None,
                    bytes: 10,
                    queued: 0,
                },
            ],
            processes: vec![
                ProcessStatus {
                    name: "upper".into(),
                    command: vec!["tr".into()],
                    pid: Some(9),
                    state: "running".into(),
                    restarts: 3,
                    last_exit: None,
                    bytes_in: 0,
                    bytes_out: 0,
                },
                ProcessStatus {
                    name: "gz".into(),
                    command: vec!["gzip".into()],
                    pid: None,
                    state: "restarting".into(),
                    restarts: 1,
                    last_exit: Some("exited with status 1".into()),
                    bytes_in: 0,
                    bytes_out: 0,
                },
            ],
            routes: vec![
                RouteStatus {
                    index: 0,
                    name: "audit\\\"x\"\nend".into(),
                    from: vec!["in".into()],
                    to: vec!["out".into(), "upper".into()],
                    framing: "lines".into(),
                    when_full: "drop-newest".into(),
                    eof: "hold".into(),
                    long_lines: 1,
                    sinks: vec![
                        SinkStatus {
                            sink: "out".into(),
                            produced: 100,
                            delivered: 60,
                            held: 30,
                            dropped: 10,
                            lines: Some(LineCounts {
                                produced: 10,
                                delivered: 6,
                                held: 3,
                                dropped: 1,
                            }),
                        },
                        SinkStatus {
                            sink: "upper".into(),
                            produced: 100,
                            delivered: 100,
                            held: 0,
                            dropped: 0,
                            lines: Some(LineCounts {
                                produced: 10,
                                delivered: 10,
                                held: 0,
                                dropped: 0,
                            }),
                        },
                    ],
                },
                RouteStatus {
                    index: 1,
                    // From a daemon before route names.
                    name: String::new(),
                    from: vec!["upper".into()],
                    to: vec!["out".into()],
                    framing: "bytes".into(),
                    when_full: "block".into(),
                    eof: "hold".into(),
                    long_lines: 0,
                    sinks: vec![SinkStatus {
                        sink: "out".into(),
                        produced: 4,
                        delivered: 4,
                        held: 0,
                        dropped: 0,
                        lines: None,
                    }],
                },
            ],
            processes_not_visible: Some(3),
        }
    }

    #[test]
    fn renders_every_family_with_escaped_labels() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_100);
        let text = render(&small(), now);
        let want = r#"# HELP fifod_start_time_seconds When fifod started, in seconds since the Unix epoch, to the second (the clock of fifod status less fifod's uptime).
# TYPE fifod_start_time_seconds gauge
fifod_start_time_seconds 1700000010
# HELP fifod_uptime_seconds How long fifod has run.
# TYPE fifod_uptime_seconds gauge
fifod_uptime_seconds 90.25
# HELP fifod_reload_requests_total Reload requests (SIGHUPs) fifod took.
# TYPE fifod_reload_requests_total counter
fifod_reload_requests_total 2
# HELP fifod_upgrades_total Upgrades in place (fifod upgrade) since fifod was started.
# TYPE fifod_upgrades_total counter
fifod_upgrades_total 0
# HELP fifod_upgrade_failures Upgrades that failed since the last one that worked; fifod went on as it was.
# TYPE fifod_upgrade_failures gauge
fifod_upgrade_failures 0
# HELP fifod_last_reload_success Whether the last reload succeeded (1) or failed and the config before it stays in force (0); absent before the first reload.
# TYPE fifod_last_reload_success gauge
fifod_last_reload_success 0
# HELP fifod_last_reload_timestamp_seconds When the last reload ended, in seconds since the Unix epoch; absent before the first reload.
# TYPE fifod_last_reload_timestamp_seconds gauge
fifod_last_reload_timestamp_seconds 1700000000
# HELP fifod_fifos FIFOs fifod manages.
# TYPE fifod_fifos gauge
fifod_fifos 2
# HELP fifod_fifo_info A FIFO's path, mode and role (input, output or unrouted); always 1.
# TYPE fifod_fifo_info gauge
fifod_fifo_info{fifo="in",path="/run/fifod/a \"quoted\" \\ path\nnext",mode="0620",role="input"} 1
fifod_fifo_info{fifo="out",path="/run/fifod/out",mode="0640",role="output"} 1
# HELP fifod_fifo_bytes_total Bytes fifod read from an input FIFO or wrote into an output FIFO.
# TYPE fifod_fifo_bytes_total counter
fifod_fifo_bytes_total{fifo="in"} 2048
fifod_fifo_bytes_total{fifo="out"} 10
# HELP fifod_fifo_queued_bytes Bytes waiting in a FIFO's pipe.
# TYPE fifod_fifo_queued_bytes gauge
fifod_fifo_queued_bytes{fifo="in"} 5
fifod_fifo_queued_bytes{fifo="out"} 0
# HELP fifod_fifo_readers Processes other than fifod that have a FIFO open for reading (read-write included), as far as the user of fifod status may see.
# TYPE fifod_fifo_readers gauge
fifod_fifo_readers{fifo="in"} 1
# HELP fifod_fifo_writers Processes other than fifod that have a FIFO open for writing (read-write included), as far as the user of fifod status may see.
# TYPE fifod_fifo_writers gauge
fifod_fifo_writers{fifo="in"} 2
# HELP fifod_peer_processes_not_visible Processes whose open files fifod status could not look at (another user's, without privilege): fifod_fifo_readers and fifod_fifo_writers leave theirs out.
# TYPE fifod_peer_processes_not_visible gauge
fifod_peer_processes_not_visible 3
# HELP fifod_processes Processes of the config by state: running, restarting (waiting to restart) or stopped.
# TYPE fifod_processes gauge
fifod_processes{state="running"} 1
fifod_processes{state="restarting"} 1
fifod_processes{state="stopped"} 0
# HELP fifod_process_up Whether a process of the config is running (1) or not (0).
# TYPE fifod_process_up gauge
fifod_process_up{process="upper"} 1
fifod_process_up{process="gz"} 0
# HELP fifod_process_restarts_total Times fifod restarted a process.
# TYPE fifod_process_restarts_total counter
fifod_process_restarts_total{process="upper"} 3
fifod_process_restarts_total{process="gz"} 1
# HELP fifod_route_produced_bytes_total Bytes a route's sources gave for a sink: delivered, held or dropped.
# TYPE fifod_route_produced_bytes_total counter
fifod_route_produced_bytes_total{route="audit\\\"x\"\nend",sink="out"} 100
fifod_route_produced_bytes_total{route="audit\\\"x\"\nend",sink="upper"} 100
fifod_route_produced_bytes_total{route="route[1]",sink="out"} 4
# HELP fifod_route_delivered_bytes_total Bytes a route wrote into a sink.
# TYPE fifod_route_delivered_bytes_total counter
fifod_route_delivered_bytes_total{route="audit\\\"x\"\nend",sink="out"} 60
fifod_route_delivered_bytes_total{route="audit\\\"x\"\nend",sink="upper"} 100
fifod_route_delivered_bytes_total{route="route[1]",sink="out"} 4
# HELP fifod_route_held_bytes Bytes a route holds for a sink, a line in progress included.
# TYPE fifod_route_held_bytes gauge
fifod_route_held_bytes{route="audit\\\"x\"\nend",sink="out"} 30
fifod_route_held_bytes{route="audit\\\"x\"\nend",sink="upper"} 0
fifod_route_held_bytes{route="route[1]",sink="out"} 0
# HELP fifod_route_dropped_bytes_total Bytes a route's when_full policy dropped for a sink.
# TYPE fifod_route_dropped_bytes_total counter
fifod_route_dropped_bytes_total{route="audit\\\"x\"\nend",sink="out"} 10
fifod_route_dropped_bytes_total{route="audit\\\"x\"\nend",sink="upper"} 0
fifod_route_dropped_bytes_total{route="route[1]",sink="out"} 0
# HELP fifod_route_produced_lines_total Lines a line route's sources gave for a sink: delivered, held or dropped.
# TYPE fifod_route_produced_lines_total counter
fifod_route_produced_lines_total{route="audit\\\"x\"\nend",sink="out"} 10
fifod_route_produced_lines_total{route="audit\\\"x\"\nend",sink="upper"} 10
# HELP fifod_route_delivered_lines_total Lines a line route wrote into a sink.
# TYPE fifod_route_delivered_lines_total counter
fifod_route_delivered_lines_total{route="audit\\\"x\"\nend",sink="out"} 6
fifod_route_delivered_lines_total{route="audit\\\"x\"\nend",sink="upper"} 10
# HELP fifod_route_held_lines Whole lines a line route holds for a sink.
# TYPE fifod_route_held_lines gauge
fifod_route_held_lines{route="audit\\\"x\"\nend",sink="out"} 3
fifod_route_held_lines{route="audit\\\"x\"\nend",sink="upper"} 0
# HELP fifod_route_dropped_lines_total Lines a line route's when_full policy dropped for a sink.
# TYPE fifod_route_dropped_lines_total counter
fifod_route_dropped_lines_total{route="audit\\\"x\"\nend",sink="out"} 1
fifod_route_dropped_lines_total{route="audit\\\"x\"\nend",sink="upper"} 0
# HELP fifod_route_long_lines_total Lines longer than a line route's max_line, passed on in pieces.
# TYPE fifod_route_long_lines_total counter
fifod_route_long_lines_total{route="audit\\\"x\"\nend"} 1
"#;
        assert_eq!(text, want);
    }

    #[test]
    fn before_a_reload_and_without_peers_their_families_are_left_out() {
        let mut status = small();
        status.last_reload = None;
        status.processes_not_visible = None;
        for f in &mut status.fifos {
            f.peers = None;
        }
        let text = render(&status, UNIX_EPOCH + Duration::from_secs(100));
        for absent in [
            "fifod_last_reload_success",
            "fifod_last_reload_timestamp_seconds",
            "fifod_fifo_readers",
            "fifod_fifo_writers",
            "fifod_peer_processes_not_visible",
        ] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
        assert!(text.contains("\nfifod_start_time_seconds 10\n"), "{text}");
    }

    #[test]
    fn label_values_escape_backslash_quote_and_newline_only() {
        assert_eq!(escape_label("a\\b\"c\nd\te é"), "a\\\\b\\\"c\\nd\te é");
        assert_eq!(escape_help("a\\b\nc\"d"), "a\\\\b\\nc\"d");
    }
}
