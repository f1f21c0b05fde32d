//! Running under systemd: the notification protocol (the test plays the
//! service manager on a datagram socket), the watchdog, what children do not
//! inherit, and log lines with journald's priority prefix.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::common::{
    Daemon, IN_OUT, Launch, STOP_TIMEOUT, Sandbox, TIMEOUT, lstat, open_reader, open_writer,
    read_exact, started_pids, wait_log, wait_until, write_all,
};

// ---------------------------------------------------------------------------
// The service manager's end of $NOTIFY_SOCKET
// ---------------------------------------------------------------------------

/// What the test sends itself to know that everything the daemon sent
/// before was received (one socket's datagrams arrive in order).
const SENTINEL: &str = "TEST_SENTINEL=1\n";

/// A datagram socket in the sandbox, read on a thread as fast as datagrams
/// come (a full queue would block the daemon's sends), with each datagram
/// and when it arrived handed to the test.
#[derive(Debug)]
struct Manager {
    path: PathBuf,
    rx: Receiver<(Instant, String)>,
    /// Every datagram taken from `rx` so far, in order.
    seen: Vec<String>,
    closed: Arc<AtomicBool>,
}

impl Manager {
    fn bind(sb: &Sandbox) -> Manager {
        let path = sb.path("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("set a read timeout");
        let closed = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let stop = Arc::clone(&closed);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !stop.load(Ordering::SeqCst) {
                match socket.recv(&mut buf) {
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        if tx.send((Instant::now(), text)).is_err() {
                            return;
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock
                                | std::io::ErrorKind::TimedOut
                                | std::io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => panic!("recv on the notify socket: {e}"),
                }
            }
        });
        Manager {
            path,
            rx,
            seen: Vec::new(),
            closed,
        }
    }

    /// A launch with `NOTIFY_SOCKET` naming this socket, plus `env`.
    fn launch(&self, env: &[(&str, &str)]) -> Launch {
        let mut all = vec![("NOTIFY_SOCKET".to_string(), self.path.clone().into())];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.into())));
        Launch {
            env: all,
            ..Launch::default()
        }
    }

    /// The next datagram and when it arrived, or None once `end` passed.
    fn next(&mut self, end: Instant) -> Option<(Instant, String)> {
        match self
            .rx
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            Ok((at, text)) => {
                self.seen.push(text.clone());
                Some((at, text))
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => panic!("the notify socket's reader died"),
        }
    }

    /// Takes datagrams until one satisfies `cond` (deadline `TIMEOUT`);
    /// returns it and when it arrived. Panics with everything seen and the
    /// log otherwise.
    fn until(&mut self, d: &Daemon, what: &str, cond: impl Fn(&str) -> bool) -> (Instant, String) {
        let end = Instant::now() + TIMEOUT;
        while let Some((at, text)) = self.next(end) {
            if cond(&text) {
                return (at, text);
            }
        }
        panic!(
            "no datagram with {what} within {TIMEOUT:?}; received {:?}\n--- log ---\n{}",
            self.seen,
            d.log()
        );
    }

    /// Takes every datagram the daemon sent so far: the test sends itself
    /// a sentinel and reads up to it.
    fn take_all(&mut self, d: &Daemon) {
        let socket = UnixDatagram::unbound().expect("socket");
        socket
            .send_to(SENTINEL.as_bytes(), &self.path)
            .expect("send the sentinel");
        self.until(d, "the test's sentinel", |text| text == SENTINEL);
        self.seen.pop();
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

/// The `KEY=value` assignments of a datagram.
fn fields(datagram: &str) -> Vec<(&str, &str)> {
    datagram.lines().filter_map(|l| l.split_once('=')).collect()
}

/// The value of `key` in `datagram`, if it has one.
fn field<'a>(datagram: &'a str, key: &str) -> Option<&'a str> {
    fields(datagram)
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn has(datagram: &str, assignment: &str) -> bool {
    datagram.lines().any(|l| l == assignment)
}

/// The state changes of `seen` in order (datagrams with only `STATUS=` or
/// `WATCHDOG=1` left out).
fn state_changes(seen: &[String]) -> Vec<&'static str> {
    let states = ["READY=1", "RELOADING=1", "STOPPING=1"];
    seen.iter()
        .flat_map(|d| states.into_iter().filter(|s| has(d, s)))
        .collect()
}

/// CLOCK_MONOTONIC now, in microseconds (what `MONOTONIC_USEC=` counts).
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime: {}", std::io::Error::last_os_error());
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// Writes `data` into `in` and reads it back from `out`.
fn assert_flows(d: &Daemon, data: &[u8]) {
    let r = open_reader(&d.fifo("out"));
    let w = open_writer(&d.fifo("in"));
    write_all(&w, data, Instant::now() + TIMEOUT);
    assert_eq!(
        read_exact(&r, data.len(), TIMEOUT),
        data,
        "in -> out\n--- log ---\n{}",
        d.log()
    );
}

// ---------------------------------------------------------------------------
// Notifications
// ---------------------------------------------------------------------------

#[test]
fn ready_reloading_ready_stopping_in_order() {
    let sb = Sandbox::new();
    let config = r#"
[fifo.in]
[fifo.out]
[fifo.spare]

[process.sleeper]
command = ["sleep", "3600"]

[[route]]
from = ["in"]
to = ["out"]
"#;
    sb.write_config(config);
    let mut m = Manager::bind(&sb);
    let mut d = Daemon::spawn_with(sb, &m.launch(&[]));

    // READY=1 comes first, once every FIFO exists and is open, and the
    // process was started.
    let end = Instant::now() + TIMEOUT;
    let Some((_, first)) = m.next(end) else {
        panic!("no datagram within {TIMEOUT:?}\n--- log ---\n{}", d.log());
    };
    for name in ["in", "out", "spare"] {
        let md = lstat(&d.fifo(name));
        assert!(
            md.is_some_and(|md| md.file_type().is_fifo()),
            "{name} is not a FIFO when READY=1 arrives\n--- log ---\n{}",
            d.log()
        );
    }
    // Without fifod holding it open for reading, this would fail (ENXIO).
    drop(open_writer(&d.fifo("in")));
    assert_eq!(
        started_pids(&d.log(), "sleeper").len(),
        1,
        "READY=1 before the process started\n--- log ---\n{}",
        d.log()
    );
    assert!(has(&first, "READY=1"), "first datagram: {first:?}");
    let status = field(&first, "STATUS").unwrap_or_else(|| panic!("no STATUS= in {first:?}"));
    assert!(
        status.starts_with("3 fifos, 1/1 processes running"),
        "STATUS={status}"
    );
    d.wait_ready();

    // A reload: RELOADING=1 with the monotonic time it started, then READY=1.
    d.sb.write_config(&format!("{config}\n[fifo.added]\n"));
    let before = monotonic_usec();
    d.reload().expect("the reload completes");
    assert!(lstat(&d.fifo("added")).is_some(), "the reload made no FIFO");
    let (_, reloading) = m.until(&d, "RELOADING=1", |t| has(t, "RELOADING=1"));
    let after = monotonic_usec();
    let usec: u64 = field(&reloading, "MONOTONIC_USEC")
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC= in {reloading:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("MONOTONIC_USEC= is not a number in {reloading:?}"));
    assert!(
        (before..=after).contains(&usec),
        "MONOTONIC_USEC={usec} is not between {before} and {after} (CLOCK_MONOTONIC)"
    );
    let (_, ready) = m.until(&d, "READY=1", |t| has(t, "READY=1"));
    let status = field(&ready, "STATUS").unwrap_or_else(|| panic!("no STATUS= in {ready:?}"));
    assert!(
        status.starts_with("4 fifos, 1/1 processes running"),
        "STATUS={status}"
    );

    // The stop: STOPPING=1 when the drain starts.
    d.signal(Signal::SIGTERM);
    m.until(&d, "STOPPING=1", |t| has(t, "STOPPING=1"));
    let st = d.wait_exit(STOP_TIMEOUT);
    assert_eq!(st.code(), Some(0), "exit {st:?}\n{}", d.log());
    m.take_all(&d);
    assert_eq!(
        state_changes(&m.seen),
        ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"],
        "received {:?}",
        m.seen
    );
}

#[test]
fn an_invalid_reload_says_so_in_status_and_keeps_serving() {
    let sb = Sandbox::new();
    sb.write_config(IN_OUT);
    let mut m = Manager::bind(&sb);
    let mut d = Daemon::start_with(sb, &m.launch(&[]));
    m.until(&d, "READY=1", |t| has(t, "READY=1"));

    d.sb.write_raw_config("this is [not TOML\n");
    let why = d.reload().expect_err("a garbage config cannot be applied");
    assert!(why.contains("invalid"), "reload failed: {why}");
    m.until(&d, "RELOADING=1", |t| has(t, "RELOADING=1"));
    let (_, ready) = m.until(&d, "READY=1", |t| has(t, "READY=1"));
    let status = field(&ready, "STATUS").unwrap_or_else(|| panic!("no STATUS= in {ready:?}"));
    assert!(status.contains("reload failed"), "STATUS={status}");
    assert!(status.contains("2 fifos"), "STATUS={status}");

    assert_flows(&d, b"the old config still serves\n");

    // The stop's status still says it: the next start would fail.
    d.signal(Signal::SIGTERM);
    let (_, stopping) = m.until(&d, "STOPPING=1", |t| has(t, "STOPPING=1"));
    let status = field(&stopping, "STATUS").unwrap_or_else(|| panic!("no STATUS= in {stopping:?}"));
    assert!(
        status.starts_with("reload failed at ")
            && status.ends_with("; stopping: draining (received SIGTERM)"),
        "STATUS={status}"
    );
    let st = d.wait_exit(STOP_TIMEOUT);
    assert_eq!(st.code(), Some(0), "exit {st:?}\n{}", d.log());
    m.take_all(&d);
    assert_eq!(
        state_changes(&m.seen),
        ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"],
        "received {:?}",
        m.seen
    );
}

/// `IN_OUT` with a mistake on line 6, column 8 (`fifo.out.mode`).
const BAD_MODE: &str = r#"[daemon]
dir = "{RUN}"

[fifo.in]
[fifo.out]
mode = "999"

[[route]]
from = ["in"]
to = ["out"]
"#;

/// Keeps one byte at a time flowing from `in` to `out` until `stop`, so
/// that fifod's status changes all along; returns how many went.
fn keep_traffic(d: &Daemon, stop: &Arc<AtomicBool>) -> crate::common::Joiner<u64> {
    let stop = Arc::clone(stop);
    let r = open_reader(&d.fifo("out"));
    let w = open_writer(&d.fifo("in"));
    crate::common::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            write_all(&w, b"x", Instant::now() + TIMEOUT);
            assert_eq!(read_exact(&r, 1, TIMEOUT), b"x");
            n += 1;
        }
        n
    })
}

/// The byte count of a `STATUS=` line (`..., N bytes relayed`).
fn relayed(status: &str) -> u64 {
    status
        .strip_suffix(" bytes relayed")
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in STATUS={status}"))
}

#[test]
fn a_failed_reload_stays_in_status_until_a_reload_succeeds() {
    let sb = Sandbox::new();
    sb.write_config(IN_OUT);
    let mut m = Manager::bind(&sb);
    let d = Daemon::start_with(sb, &m.launch(&[]));
    m.until(&d, "READY=1", |t| has(t, "READY=1"));

    d.sb.write_raw_config(BAD_MODE);
    d.reload()
        .expect_err("a config with a bad mode cannot be applied");
    let first_error = format!("{}:6:8: fifo.out.mode: ", d.sb.config_path().display());
    let failed = |status: &str| {
        status.starts_with("reload failed at ")
            && status.contains(&format!(": {first_error}"))
            && status.contains("; 2 fifos, 0/0 processes running, ")
    };
    m.until(&d, "RELOADING=1", |t| has(t, "RELOADING=1"));
    let (_, ready) = m.until(&d, "READY=1", |t| has(t, "READY=1"));
    let status = field(&ready, "STATUS").unwrap_or_else(|| panic!("no STATUS= in {ready:?}"));
    assert!(failed(status), "STATUS={status}");

    // Traffic changes the status all along: every line fifod sends for it,
    // seconds later, still starts with the failure.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = keep_traffic(&d, &stop);
    let mut counts = Vec::new();
    while counts.len() < 3 {
        let (_, text) = m.until(&d, "a STATUS= without READY=1", |t| {
            !has(t, "READY=1") && field(t, "STATUS").is_some()
        });
        let status = field(&text, "STATUS").unwrap_or_default();
        assert!(
            failed(status),
            "the failed reload is gone from STATUS={status}\n--- log ---\n{}",
            d.log()
        );
        counts.push(relayed(status));
    }
    stop.store(true, Ordering::SeqCst);
    traffic.join(TIMEOUT);
    assert!(
        counts.windows(2).all(|w| w[0] < w[1]),
        "the status did not follow the traffic: {counts:?}"
    );

    // A reload that succeeds clears it, from its READY=1 on.
    d.sb.write_config(IN_OUT);
    d.reload().expect("the good config is applied");
    m.until(&d, "RELOADING=1", |t| has(t, "RELOADING=1"));
    let (_, ready) = m.until(&d, "READY=1", |t| has(t, "READY=1"));
    let status = field(&ready, "STATUS").unwrap_or_else(|| panic!("no STATUS= in {ready:?}"));
    assert!(
        status.starts_with("2 fifos, 0/0 processes running, "),
        "STATUS={status}"
    );
    assert_flows(&d, b"x");
    let (_, text) = m.until(&d, "a STATUS= without READY=1", |t| {
        !has(t, "READY=1") && field(t, "STATUS").is_some()
    });
    let status = field(&text, "STATUS").unwrap_or_default();
    assert!(
        status.starts_with("2 fifos, 0/0 processes running, "),
        "STATUS={status}"
    );
    assert!(
        relayed(status) > counts[2],
        "STATUS={status}, before: {counts:?}"
    );
}

#[test]
fn the_watchdog_is_pinged_at_half_its_period() {
    const PINGS: usize = 6;
    let sb = Sandbox::new();
    sb.write_config(IN_OUT);
    let mut m = Manager::bind(&sb);
    let spawned = Instant::now();
    let mut d = Daemon::spawn_with(sb, &m.launch(&[("WATCHDOG_USEC", "200000")]));
    // Pings from the start on, even while nothing happens.
    let mut pings = Vec::new();
    let end = spawned + Duration::from_secs(3);
    while pings.len() < PINGS {
        match m.next(end) {
            Some((at, text)) if has(&text, "WATCHDOG=1") => pings.push(at),
            Some(_) => {}
            None => panic!(
                "{} WATCHDOG=1 within 3 s; received {:?}\n--- log ---\n{}",
                pings.len(),
                m.seen,
                d.log()
            ),
        }
    }
    // Ping k is due 100 ms after ping k-1 was sent, and never comes early;
    // most come on time (some may be late on a loaded machine).
    let last = pings[PINGS - 1] - spawned;
    assert!(
        last >= Duration::from_millis(100) * PINGS as u32,
        "{PINGS} pings within {last:?}: more often than every 100 ms"
    );
    let mut intervals: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    intervals.sort();
    let median = intervals[intervals.len() / 2];
    assert!(
        median < Duration::from_millis(170),
        "pings every {median:?} (median): not at half of WATCHDOG_USEC=200000; {intervals:?}"
    );
    d.wait_ready();
    d.stop_ok();
}

#[test]
fn status_follows_the_traffic_at_most_once_a_second() {
    let sb = Sandbox::new();
    sb.write_config(IN_OUT);
    let mut m = Manager::bind(&sb);
    let d = Daemon::start_with(sb, &m.launch(&[]));
    let (ready_at, _) = m.until(&d, "READY=1", |t| has(t, "READY=1"));
    // Bytes flow all along, so the status changes all the time.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = keep_traffic(&d, &stop);
    let mut sent = vec![(ready_at, 0u64)];
    while sent.len() < 3 {
        let (at, text) = m.until(&d, "a STATUS= without READY=1", |t| {
            !has(t, "READY=1") && field(t, "STATUS").is_some()
        });
        sent.push((at, relayed(field(&text, "STATUS").unwrap_or_default())));
    }
    stop.store(true, Ordering::SeqCst);
    let n = traffic.join(TIMEOUT);
    for pair in sent.windows(2) {
        let ((a, before), (b, after)) = (pair[0], pair[1]);
        assert!(after > before, "the count did not grow: {sent:?}");
        assert!(
            b - a >= Duration::from_millis(800),
            "two STATUS= {:?} apart",
            b - a
        );
    }
    assert!(sent[2].1 <= n, "{sent:?}, {n} bytes sent");
}

/// Starts fifod with `env` besides `NOTIFY_SOCKET`, makes it relay a byte,
/// and waits for the `STATUS=` that reports it, which the rate limit holds
/// back until a second after READY=1: ten watchdog periods of 200 ms, had
/// one been wrongly enabled. Asserts that no `WATCHDOG=1` came meanwhile.
fn assert_no_watchdog(env: &[(&str, &str)]) {
    let sb = Sandbox::new();
    sb.write_config(IN_OUT);
    let mut m = Manager::bind(&sb);
    let d = Daemon::start_with(sb, &m.launch(env));
    m.until(&d, "READY=1", |t| has(t, "READY=1"));
    assert_flows(&d, b"x");
    m.until(&d, "the STATUS= that counts the byte", |t| {
        field(t, "STATUS").is_some_and(|s| s.contains(", 1 bytes relayed"))
    });
    m.take_all(&d);
    assert!(
        !m.seen.iter().any(|t| t.contains("WATCHDOG")),
        "received {:?}",
        m.seen
    );
}

#[test]
fn no_watchdog_pings_without_watchdog_usec() {
    assert_no_watchdog(&[]);
}

#[test]
fn no_watchdog_pings_when_watchdog_pid_names_another_process() {
    let other = std::process::id().to_string();
    assert_no_watchdog(&[("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", &other)]);
}

/// A service manager that does not read its socket must not stop the relay:
/// fifod never blocks, so a notification that cannot go is dropped.
#[test]
fn a_notify_socket_nobody_reads_does_not_stall_the_relay() {
    let sb = Sandbox::new();
    sb.write_config(IN_OUT);
    let path = sb.path("notify.sock");
    let _unread = UnixDatagram::bind(&path).expect("bind the notify socket");
    let launch = Launch {
        env: vec![
            ("NOTIFY_SOCKET".to_string(), path.clone().into()),
            ("WATCHDOG_USEC".to_string(), "20000".into()),
        ],
        ..Launch::default()
    };
    let d = Daemon::start_with(sb, &launch);
    // The queue is full once it refuses one more datagram.
    let probe = UnixDatagram::unbound().expect("socket");
    probe.set_nonblocking(true).expect("non-blocking");
    let full = wait_until(TIMEOUT, || {
        matches!(probe.send_to(b"PROBE=1\n", &path),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    });
    assert!(full, "the notify socket's queue never filled");
    // fifod tries to ping every 10 ms meanwhile: 30 of them at least.
    let r = open_reader(&d.fifo("out"));
    let w = open_writer(&d.fifo("in"));
    let since = Instant::now();
    while since.elapsed() < Duration::from_millis(300) {
        write_all(&w, b"ping\n", Instant::now() + TIMEOUT);
        assert_eq!(
            read_exact(&r, 5, TIMEOUT),
            b"ping\n",
            "in -> out\n--- log ---\n{}",
            d.log()
        );
    }
}

#[test]
fn children_do_not_inherit_the_service_managers_variables() {
    let sb = Sandbox::new();
    sb.write_config(
        r#"
[fifo.out]

[process.show]
command = ["sh", "-c", "echo ${NOTIFY_SOCKET:-unset}; env | grep -E '^(WATCHDOG_|LISTEN_|FIFOD_TEST_)' | sort; echo end"]
restart = "never"

[[route]]
from = ["show"]
to = ["out"]
"#,
    );
    let mut m = Manager::bind(&sb);
    // LISTEN_PID names another process, so fifod takes no fds either.
    let launch = m.launch(&[
        ("WATCHDOG_USEC", "60000000"),
        ("LISTEN_FDS", "1"),
        ("LISTEN_PID", "1"),
        ("LISTEN_FDNAMES", "out"),
        ("FIFOD_TEST_MARK", "inherited"),
    ]);
    let d = Daemon::start_with(sb, &launch);
    m.until(&d, "READY=1", |t| has(t, "READY=1"));
    // What the child printed; a variable it should not have had would show.
    let expected = b"unset\nFIFOD_TEST_MARK=inherited\nend\n";
    let r = open_reader(&d.fifo("out"));
    let got = read_exact(&r, expected.len(), TIMEOUT);
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expected),
        "the child's environment\n--- log ---\n{}",
        d.log()
    );
}

// ---------------------------------------------------------------------------
// journald
// ---------------------------------------------------------------------------

/// A config whose run logs at every level: debug (pipe sizes), info,
/// warning (a process that fails) and, after an invalid reload, error.
const EVERY_LEVEL: &str = r#"
[daemon]
log_level = "debug"
pipe_size = "64KiB"

[fifo.in]
[fifo.out]

[process.fail]
command = ["sh", "-c", "exit 3"]
restart = "never"

[[route]]
from = ["in"]
to = ["out"]
"#;

/// Runs the `EVERY_LEVEL` config in `sb` to its stop with `launch`;
/// returns the log.
fn log_of_every_level(sb: Sandbox, launch: &Launch) -> String {
    sb.write_config(EVERY_LEVEL);
    let mut d = Daemon::start_with(sb, launch);
    wait_log(&d, "the failing process's exit", TIMEOUT, |log| {
        log.contains(FAILED)
    });
    d.sb.write_raw_config("[fifo.in\n");
    let why = d.reload().expect_err("an invalid config cannot be applied");
    assert!(why.contains("invalid"), "reload failed: {why}");
    d.stop_ok();
    d.log()
}

/// What fifod logs, as a warning, when `fail` exits.
const FAILED: &str = "exited with status 3; it will not be restarted";

/// The lines of `log` that contain `needle` (at least one).
fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    let found: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
    assert!(!found.is_empty(), "no line with {needle:?} in\n{log}");
    found
}

/// What each level's lines look like: (a part of the message, the
/// journald prefix, env_logger's level).
const LEVELS: [(&str, &str, &str); 4] = [
    ("ready: ", "<6>", " INFO ] "),
    (FAILED, "<4>", " WARN ] "),
    ("reload failed: ", "<3>", " ERROR] "),
    ("fifo in: pipe size", "<7>", " DEBUG] "),
];

#[test]
fn journald_lines_carry_their_priority_and_no_timestamp() {
    let log = log_of_every_level(
        Sandbox::new(),
        &Launch {
            journal: true,
            ..Launch::default()
        },
    );
    for line in log.lines() {
        let priority = line
            .strip_prefix('<')
            .and_then(|rest| rest.split_once('>'))
            .map(|(n, _)| n);
        assert!(
            matches!(priority, Some("3" | "4" | "6" | "7")),
            "line without a priority prefix: {line:?}\n--- log ---\n{log}"
        );
        assert!(!line.contains("[20"), "a timestamp in {line:?}");
    }
    for (needle, prefix, _) in LEVELS {
        for line in lines_with(&log, needle) {
            assert!(
                line.starts_with(prefix),
                "{line:?} does not start with {prefix}"
            );
        }
    }
}

#[test]
fn journald_config_errors_at_start_carry_their_priority() {
    let sb = Sandbox::new();
    sb.write_config("[fifo.in]\nmode = \"999\"\n");
    let out = sb.run_expect_exit(&Launch {
        journal: true,
        ..Launch::default()
    });
    out.assert_code(78);
    assert!(out.stderr.contains("fifo.in.mode"), "{}", out.stderr);
    for line in out.stderr.lines() {
        assert!(
            line.starts_with("<3>"),
            "an error without its priority: {line:?}\n--- stderr ---\n{}",
            out.stderr
        );
    }
}

#[test]
fn journal_stream_naming_another_file_keeps_the_usual_format() {
    let sb = Sandbox::new();
    // A stream that is not the daemon's stderr: the sandbox directory's.
    let other = fs::metadata(sb.root()).expect("stat the sandbox");
    let launch = Launch {
        env: vec![(
            "JOURNAL_STREAM".to_string(),
            format!("{}:{}", other.dev(), other.ino()).into(),
        )],
        ..Launch::default()
    };
    let log = log_of_every_level(sb, &launch);
    for line in log.lines() {
        assert!(
            line.starts_with("[20"),
            "not env_logger's usual format: {line:?}\n--- log ---\n{log}"
        );
    }
    for (needle, _, level) in LEVELS {
        for line in lines_with(&log, needle) {
            assert!(line.contains(level), "{level:?} not in {line:?}");
        }
    }
}
