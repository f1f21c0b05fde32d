//! `fifod status`: running it, and reading its JSON document.

use serde_json::Value;

use super::{Daemon, Launch, Outcome, Sandbox, TIMEOUT, wait_until};

/// Runs `fifod status --config <sandbox config>` (with `--json` if asked).
pub fn status_of(sb: &Sandbox, json: bool) -> Outcome {
    let mut args = sb.cmd_args("status");
    if json {
        args.push("--json".into());
    }
    sb.run_to_exit(&args, &Launch::default())
}

/// `fifod status --json` of a running daemon, parsed; panics unless it
/// exits 0 with one JSON document.
pub fn status_json(d: &Daemon) -> Value {
    let out = status_of(&d.sb, true);
    out.assert_code(0);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "fifod status --json printed no JSON document: {e}\n--- stdout ---\n{}",
            out.stdout
        )
    })
}

/// `v[key]` as an unsigned number; panics (with `v`) if absent or not one.
pub fn num(v: &Value, key: &str) -> u64 {
    v.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no unsigned number {key:?} in {v}"))
}

/// `v[key]` as a string; panics (with `v`) if absent or not one.
pub fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string {key:?} in {v}"))
}

/// `v[key]` as an array; panics (with `v`) if absent or not one.
pub fn array<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    v.get(key)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no array {key:?} in {v}"))
}

/// The one entry of the array `status[list]` named `name` (a `what`).
fn named_entry<'a>(status: &'a Value, list: &str, what: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = array(status, list)
        .iter()
        .filter(|e| text(e, "name") == name)
        .collect();
    assert_eq!(found.len(), 1, "one {what} {name:?} expected in {status}");
    found[0]
}

/// The entry of `status.fifos` named `name`.
pub fn fifo_entry<'a>(status: &'a Value, name: &str) -> &'a Value {
    named_entry(status, "fifos", "fifo", name)
}

/// The entry of `status.processes` named `name`.
pub fn process_entry<'a>(status: &'a Value, name: &str) -> &'a Value {
    named_entry(status, "processes", "process", name)
}

/// `status.routes[route]` (checking its `index`).
pub fn route_entry(status: &Value, route: usize) -> &Value {
    let r = array(status, "routes")
        .get(route)
        .unwrap_or_else(|| panic!("no route[{route}] in {status}"));
    assert_eq!(num(r, "index"), route as u64, "route[{route}]: {r}");
    r
}

/// The sink `sink` of route `route`.
pub fn sink_entry<'a>(status: &'a Value, route: usize, sink: &str) -> &'a Value {
    let found: Vec<&Value> = array(route_entry(status, route), "sinks")
        .iter()
        .filter(|s| text(s, "sink") == sink)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one sink {sink:?} expected in route[{route}] of {status}"
    );
    found[0]
}

/// The four counts of a sink (or of its `lines`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub produced: u64,
    pub delivered: u64,
    pub held: u64,
    pub dropped: u64,
}

pub fn counts(v: &Value) -> Counts {
    Counts {
        produced: num(v, "produced"),
        delivered: num(v, "delivered"),
        held: num(v, "held"),
        dropped: num(v, "dropped"),
    }
}

/// The byte counts of a sink, and its line counts (None when `lines` is
/// null). Panics if either breaks `produced = delivered + held + dropped`,
/// or if the line counts exceed the byte counts they are part of.
pub fn checked_counts(sink: &Value) -> (Counts, Option<Counts>) {
    let bytes = counts(sink);
    assert_eq!(
        bytes.produced,
        bytes.delivered + bytes.held + bytes.dropped,
        "bytes: produced != delivered + held + dropped in {sink}"
    );
    let lines = match sink.get("lines") {
        Some(Value::Null) => None,
        Some(l) => Some(counts(l)),
        None => panic!("no \"lines\" in {sink}"),
    };
    if let Some(l) = lines {
        assert_eq!(
            l.produced,
            l.delivered + l.held + l.dropped,
            "lines: produced != delivered + held + dropped in {sink}"
        );
        // A line is counted by its newline, which is one of the bytes.
        assert!(
            l.produced <= bytes.produced
                && l.delivered <= bytes.delivered
                && l.held <= bytes.held
                && l.dropped <= bytes.dropped,
            "more lines than bytes in {sink}"
        );
    }
    (bytes, lines)
}

/// Polls `fifod status --json` until `cond` holds on a snapshot; returns
/// that snapshot, or panics with the last one at the deadline.
pub fn status_until(d: &Daemon, what: &str, mut cond: impl FnMut(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(TIMEOUT, || {
        last = status_json(d);
        cond(&last)
    });
    assert!(
        ok,
        "status never showed {what}; last: {last}\n--- log ---\n{}",
        d.log()
    );
    last
}
