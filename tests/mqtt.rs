//! The recipe of `config/mqtt.toml`, end to end with Debian's mosquitto:
//! numbered lines written into the FIFO `events` are published by
//! `mosquitto_pub -l` (a process endpoint) and read back by `mosquitto_sub`,
//! while the broker restarts and while the publisher is killed. What the
//! test asserts is what README.md ("Beyond one host: MQTT") promises.

use std::collections::HashSet;
use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::common::{
    Daemon, Guarded, Launch, Sandbox, TIMEOUT, checked_counts, is_root, open_writer, process_entry,
    sink_entry, spawn, status_json, wait_child, wait_until, write_all,
};

const RECIPE: &str = include_str!("../config/mqtt.toml");
/// Where the recipe's publisher connects; the test puts its broker there.
const RECIPE_BROKER: &str = r#""-h", "localhost", "-p", "1883""#;
const TOPIC: &str = "fifod/events";
const SUBSCRIBER_ID: &str = "fifod-test-subscriber";
/// Waits that include a reconnection (every second) and a backlog.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Lines
// ---------------------------------------------------------------------------

/// Line `n` without its newline; every line has the same length, so that
/// fifod's byte counts say which lines went where.
fn line(n: u64) -> String {
    format!("line-{n:06}")
}

const LINE_LEN: u64 = 12;

fn line_number(message: &str) -> Option<u64> {
    let digits = message.strip_prefix("line-")?;
    (digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Writes lines `from..=to` into the FIFO.
fn write_lines(w: &File, from: u64, to: u64) {
    let mut text = String::new();
    for n in from..=to {
        text.push_str(&line(n));
        text.push('\n');
    }
    write_all(w, text.as_bytes(), Instant::now() + TIMEOUT);
}

// ---------------------------------------------------------------------------
// Programs, ports
// ---------------------------------------------------------------------------

/// `name` on PATH, or in the sbin directories (where Debian puts the
/// broker) that an ordinary user's PATH may lack.
fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A port on 127.0.0.1 that is free now, below the kernel's range of
/// ephemeral ports: while the broker is down, no `connect` or `bind` to
/// port 0 elsewhere is given it, and the clients' own reconnections cannot
/// connect to themselves on it. Another test may still take it first; the
/// broker then fails to start and the caller tries another one.
fn free_port(attempt: u32) -> u16 {
    let low: u16 = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    for k in 0.. {
        let candidate = if low > 11_000 {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(attempt);
            h.write_u32(k);
            10_000 + (h.finish() % u64::from(low - 10_000)) as u16
        } else {
            0
        };
        if let Ok(l) = TcpListener::bind((Ipv4Addr::LOCALHOST, candidate)) {
            return l.local_addr().expect("local_addr").port();
        }
        assert!(k < 1000, "no free port below {low}");
    }
    unreachable!()
}

/// A child that is killed with SIGKILL (and reaped) when dropped.
#[derive(Debug)]
struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------
// The broker
// ---------------------------------------------------------------------------

/// A `mosquitto` on 127.0.0.1:`port` with persistence in the sandbox, so
/// that the subscriber's session (its subscription and what is queued for
/// it) outlives a restart.
#[derive(Debug)]
struct Broker {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    runs: u32,
    log: PathBuf,
    child: Option<Owned>,
}

impl Broker {
    /// Starts it on a free port, trying another one if it was taken.
    fn start(bin: PathBuf, dir: PathBuf) -> Broker {
        fs::create_dir(&dir).expect("mkdir broker");
        let mut broker = Broker {
            bin,
            dir,
            port: 0,
            runs: 0,
            log: PathBuf::new(),
            child: None,
        };
        for attempt in 0..20 {
            broker.port = free_port(attempt);
            if broker.launch() {
                return broker;
            }
        }
        panic!(
            "the broker did not start on any of 20 ports\n{}",
            broker.logs()
        );
    }

    /// Runs it on its port; false if it exited (the port was taken).
    fn launch(&mut self) -> bool {
        let conf = self.dir.join("mosquitto.conf");
        // Run as root, it would become the user mosquitto, who cannot
        // write its database into the sandbox.
        let user = if is_root() { "user root\n" } else { "" };
        fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n\
                 allow_anonymous true\n\
                 persistence true\n\
                 persistence_location {dir}/\n\
                 # A subscriber that is away gets everything (the default\n\
                 # keeps 1000 messages and drops the rest).\n\
                 max_queued_messages 0\n\
                 log_dest stderr\n\
                 log_type error\nlog_type warning\nlog_type notice\n\
                 log_type information\nlog_type subscribe\n\
                 {user}",
                port = self.port,
                dir = self.dir.display(),
            ),
        )
        .expect("write mosquitto.conf");
        self.runs += 1;
        self.log = self.dir.join(format!("mosquitto-{}.log", self.runs));
        let log = File::create(&self.log).expect("create the broker's log");
        let mut child = Command::new(&self.bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .map(Owned)
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        let mut exited = false;
        let listening = wait_until(TIMEOUT, || {
            exited = matches!(child.0.try_wait(), Ok(Some(_)));
            exited || fs::read_to_string(&self.log).is_ok_and(|l| l.contains(" running\n"))
        });
        if exited {
            return false;
        }
        assert!(listening, "the broker is not running\n{}", self.logs());
        assert!(
            TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok(),
            "the broker runs but its port takes no connection\n{}",
            self.logs()
        );
        self.child = Some(child);
        true
    }

    /// SIGTERM, as an orderly restart of the service sends: it saves its
    /// database on the way out.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("the broker runs");
        kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).expect("kill");
        let status = wait_child(&mut child.0, TIMEOUT);
        assert!(
            status.is_some_and(|s| s.success()),
            "the broker did not stop cleanly: {status:?}\n{}",
            self.logs()
        );
    }

    /// Starts it again on the same port.
    fn restart(&mut self) {
        assert!(
            self.launch(),
            "the broker could not start again on port {}\n{}",
            self.port,
            self.logs()
        );
    }

    fn subscribed(&self, client: &str) -> bool {
        let wanted = format!(": {client} 1 {TOPIC}");
        fs::read_to_string(&self.log).is_ok_and(|l| l.lines().any(|l| l.ends_with(&wanted)))
    }

    /// Every run's log.
    fn logs(&self) -> String {
        let mut out = String::new();
        for run in 1..=self.runs {
            let path = self.dir.join(format!("mosquitto-{run}.log"));
            out.push_str(&format!("--- broker run {run} ---\n"));
            out.push_str(&fs::read_to_string(path).unwrap_or_default());
        }
        out
    }
}

// ---------------------------------------------------------------------------
// The subscriber
// ---------------------------------------------------------------------------

/// `mosquitto_sub` with a persistent session (`-c -i`), QoS 1: what the
/// broker queues for it while it reconnects is kept for it. Every message
/// it prints is collected.
#[derive(Debug)]
struct Subscriber {
    _child: Owned,
    got: Arc<Mutex<Vec<String>>>,
}

impl Subscriber {
    fn start(bin: &Path, port: u16, stderr: &Path) -> Subscriber {
        let mut child = Command::new(bin)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-t", TOPIC, "-q", "1", "-c", "-i", SUBSCRIBER_ID])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(stderr).expect("create the subscriber's stderr"))
            .spawn()
            .map(Owned)
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let stdout = child.0.stdout.take().expect("stdout");
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&got);
        // Ends when the subscriber does.
        spawn(move || {
            for message in BufReader::new(stdout).lines() {
                let Ok(message) = message else { break };
                sink.lock().unwrap().push(message);
            }
        });
        Subscriber { _child: child, got }
    }

    fn messages(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

/// Everything the test looks at when it fails.
fn report(d: &Daemon, broker: &Broker, sub: &Subscriber) -> String {
    let messages = sub.messages();
    let tail = &messages[messages.len().saturating_sub(20)..];
    format!(
        "subscriber: {} messages, the last: {tail:?}\n--- fifod ---\n{}\n{}",
        messages.len(),
        d.log(),
        broker.logs()
    )
}

/// Waits until the subscriber has printed line `n`.
fn wait_for_line(d: &Daemon, broker: &Broker, sub: &Subscriber, n: u64, timeout: Duration) {
    let wanted = line(n);
    assert!(
        wait_until(timeout, || sub.got.lock().unwrap().contains(&wanted)),
        "line {n} never reached the subscriber\n{}",
        report(d, broker, sub)
    );
}

/// The publisher as `fifod status` shows it: (state, pid).
fn publisher(st: &Value) -> (String, Option<u64>) {
    let p = process_entry(st, "publish");
    (
        p["state"].as_str().unwrap_or_default().to_string(),
        p["pid"].as_u64(),
    )
}

/// The route's byte and line counts for the publisher, checked to add up.
fn route_counts(st: &Value) -> (crate::common::Counts, crate::common::Counts) {
    let (bytes, lines) = checked_counts(sink_entry(st, 0, "publish"));
    (bytes, lines.expect("a line route counts lines"))
}

/// What the subscriber got, checked against what QoS 1 and the recipe
/// promise: every message is a whole line, except at most one piece of a
/// line a dying publisher was in the middle of; the first copy of each line
/// comes in order, and further copies (QoS 1 sends again what was not
/// acknowledged) repeat lines already seen; the lines that never came are
/// `lost`, a run of lines the killed publisher had taken, ending at or
/// before `taken_by_killed`.
fn check_messages(messages: &[String], last: u64, killed_after: u64, taken_by_killed: u64) {
    let mut seen = HashSet::new();
    let mut first_copies = Vec::new();
    let mut duplicates = 0;
    let mut pieces = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        match line_number(m) {
            Some(n) if seen.insert(n) => first_copies.push(n),
            Some(_) => duplicates += 1,
            None => pieces.push(i),
        }
    }
    assert!(
        first_copies.windows(2).all(|w| w[0] < w[1]),
        "lines out of order: {first_copies:?}"
    );
    let missing: Vec<u64> = (1..=last).filter(|n| !seen.contains(n)).collect();
    if let (Some(&first), Some(&end)) = (missing.first(), missing.last()) {
        assert_eq!(
            missing.len() as u64,
            end - first + 1,
            "the lines lost are not one run: {missing:?}"
        );
        assert!(
            first > killed_after && end <= taken_by_killed,
            "lines {first}..={end} were lost, but only lines after {killed_after} that the \
             killed publisher had taken (up to {taken_by_killed}) may be"
        );
    }
    // The rest of a line cut by the publisher's death, published alone by
    // the next one, right before the line that follows it.
    assert!(
        pieces.len() <= 1,
        "pieces of lines: {pieces:?} in {messages:?}"
    );
    if let Some(&i) = pieces.first() {
        let end = missing.last().copied().unwrap_or_default();
        let cut = line(end);
        let piece = &messages[i];
        assert!(
            !missing.is_empty()
                && !piece.is_empty()
                && piece.len() < cut.len()
                && cut.ends_with(piece.as_str())
                && messages.get(i + 1) == Some(&line(end + 1)),
            "message {piece:?} is neither a line nor the rest of the line lost last, \
             before the next ({missing:?})"
        );
    }
    println!(
        "note: {} messages, {} lines lost, {duplicates} duplicates",
        messages.len(),
        missing.len()
    );
}

#[test]
fn lines_reach_a_subscriber_through_a_broker_restart_and_a_publisher_killed() {
    let (Some(broker_bin), Some(_), Some(sub_bin)) = (
        program("mosquitto"),
        program("mosquitto_pub"),
        program("mosquitto_sub"),
    ) else {
        println!("note: skipped: mosquitto is not installed");
        return;
    };
    let sb = Sandbox::new();
    let mut broker = Broker::start(broker_bin, sb.path("broker"));
    let sub = Subscriber::start(&sub_bin, broker.port, &sb.path("subscriber.err"));
    assert!(
        wait_until(TIMEOUT, || broker.subscribed(SUBSCRIBER_ID)),
        "the subscriber never subscribed\n{}",
        broker.logs()
    );
    // The recipe as it ships, pointed at this broker.
    assert!(RECIPE.contains(RECIPE_BROKER), "config/mqtt.toml changed");
    sb.write_config(&RECIPE.replace(
        RECIPE_BROKER,
        &format!(r#""-h", "127.0.0.1", "-p", "{}""#, broker.port),
    ));
    let mut d = Guarded(Daemon::start_with(sb, &Launch::default()));
    let w = open_writer(&d.fifo("events"));

    // 1. The broker stops in the middle of the stream, and lines keep
    //    coming while it is away: the publisher takes them and holds them.
    let (_, first_pid) = publisher(&status_json(&d));
    write_lines(&w, 1, 4000);
    wait_for_line(&d, &broker, &sub, 500, TIMEOUT);
    broker.stop();
    write_lines(&w, 4001, 4500);
    let mut st = Value::Null;
    assert!(
        wait_until(TIMEOUT, || {
            st = status_json(&d);
            route_counts(&st).1.delivered == 4500
        }),
        "the publisher did not take the lines while the broker was away: {st}\n{}",
        report(&d, &broker, &sub)
    );
    assert_eq!(
        publisher(&st),
        ("running".to_string(), first_pid),
        "the publisher did not ride out the broker's absence\n{}",
        report(&d, &broker, &sub)
    );
    broker.restart();
    wait_for_line(&d, &broker, &sub, 4500, RECONNECT_TIMEOUT);
    check_messages(&sub.messages(), 4500, 4500, 4500);

    // 2. The publisher is killed in the middle of the stream: what it had
    //    taken and not sent is lost; what comes while it is down, fifod
    //    holds for the next one.
    assert_eq!(
        publisher(&status_json(&d)),
        ("running".to_string(), first_pid),
        "the publisher did not ride out the broker's restart\n{}",
        report(&d, &broker, &sub)
    );
    write_lines(&w, 4501, 8500);
    wait_for_line(&d, &broker, &sub, 5000, TIMEOUT);
    kill(
        Pid::from_raw(first_pid.expect("the publisher runs") as i32),
        Signal::SIGKILL,
    )
    .expect("kill the publisher");
    write_lines(&w, 8501, 8600);
    let mut down = Value::Null;
    assert!(
        wait_until(TIMEOUT, || {
            down = status_json(&d);
            publisher(&down).1 != first_pid
        }),
        "the publisher's death never showed\n{}",
        report(&d, &broker, &sub)
    );
    // Nothing reaches the publisher while it is down: what fifod had
    // delivered by then is all that the killed one can have taken.
    let taken_by_killed = route_counts(&down).1.delivered;
    if publisher(&down).0 == "restarting" {
        write_lines(&w, 8601, 8700);
        // Once fifod has read them, unless the publisher is back first.
        let mut st = Value::Null;
        assert!(
            wait_until(TIMEOUT, || {
                st = status_json(&d);
                publisher(&st).0 != "restarting" || route_counts(&st).1.produced == 8700
            }),
            "fifod did not read the lines written while the publisher was down: {st}"
        );
        let (bytes, lines) = route_counts(&st);
        if publisher(&st).0 == "restarting" {
            assert_eq!(lines.produced, 8700, "{st}");
            assert_eq!(lines.delivered, taken_by_killed, "{st}");
            assert_eq!(lines.held, 8700 - taken_by_killed, "{st}");
            assert_eq!(bytes.held, lines.held * LINE_LEN, "{st}");
        } else {
            println!("note: the publisher restarted before fifod's holding was looked at");
        }
    } else {
        println!("note: the publisher restarted before its absence was seen");
        write_lines(&w, 8601, 8700);
    }
    wait_for_line(&d, &broker, &sub, 8700, RECONNECT_TIMEOUT);
    check_messages(&sub.messages(), 8700, 5000, taken_by_killed);

    // fifod dropped nothing: every line went into a publisher's stdin.
    let st = status_json(&d);
    let (bytes, lines) = route_counts(&st);
    assert_eq!(
        (lines.produced, lines.delivered, lines.held, lines.dropped),
        (8700, 8700, 0, 0),
        "{st}"
    );
    assert_eq!(bytes.dropped, 0, "{st}");
    assert_eq!(
        process_entry(&st, "publish")["last_exit"].as_str(),
        Some("was killed by SIGKILL"),
        "{st}"
    );
    drop(w);
    d.stop_ok();
    let total = 8700 * LINE_LEN;
    let stats = format!(
        "stats events -> publish: accepted={total} delivered={total} dropped=0 undelivered=0"
    );
    assert!(d.log().contains(&stats), "no {stats:?}\n{}", d.log());
}
