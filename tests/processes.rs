//! Child processes as endpoints: pipelines through programs, stderr modes,
//! restarts and their back-off, backpressure into a child, a child's exec
//! environment, shutdown of children that resist, fifod's own stdin and
//! stdout, and passing ends on through a process.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::common::{
    BULK_TIMEOUT, Daemon, KIB, Launch, MIB, STOP_TIMEOUT, Sandbox, TIMEOUT, Verifier,
    assert_clean_stats, assert_no_more, assert_stats, assert_stats_in, children_of, exits,
    gone_or_zombie, gunzip, messages, num, open_reader, open_writer, pattern, pipe_pending,
    proc_stat, read_exact, read_some, read_to_eof, sink_entry, spawn, started_pids, status_until,
    try_write, wait_child, wait_idle, wait_log, wait_until, wrapper_script, write_all,
    write_pattern, write_until_stalled,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Log lines (whole, with level) whose message is exactly `message`.
fn lines_with_message<'a>(log: &'a str, message: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| messages(l).first().is_some_and(|m| *m == message))
        .collect()
}

/// The `NAME: N bytes left unread` count for an input (0 if not logged).
fn left_unread(log: &str, name: &str) -> u64 {
    let prefix = format!("{name}: ");
    messages(log)
        .iter()
        .filter_map(|m| m.strip_prefix(&prefix)?.strip_suffix(" bytes left unread"))
        .map(|n| n.parse::<u64>().expect("bad unread count"))
        .sum()
}

/// A `/proc/PID/status` field, e.g. `SigBlk`.
fn status_field(pid: i32, key: &str) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// Open fds of a process: fd number -> readlink target.
fn fd_targets(pid: i32) -> BTreeMap<i32, String> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read fd dir")
        .flatten()
    {
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Ok(target) = fs::read_link(entry.path()) {
            out.insert(fd, target.display().to_string());
        }
    }
    out
}

/// A process's fds by kind (pipe, socket, paths relative to `root`),
/// sorted: comparable between two daemons in two sandboxes.
fn fd_kinds(pid: i32, root: &Path) -> Vec<String> {
    let root = root.display().to_string();
    let mut kinds: Vec<String> = fd_targets(pid)
        .into_values()
        .map(|t| {
            if t.starts_with("pipe:") {
                "pipe".to_string()
            } else if t.starts_with("socket:") {
                "socket".to_string()
            } else {
                t.replace(&root, "ROOT")
            }
        })
        .collect();
    kinds.sort();
    kinds
}

/// Letters only: byte `i` of stream `seed`, mapped to a-z or A-Z.
fn letter(b: u8) -> u8 {
    let l = b'a' + b % 26;
    if b & 0x80 != 0 {
        l.to_ascii_uppercase()
    } else {
        l
    }
}

fn fill_letters(seed: u64, offset: u64, buf: &mut [u8]) {
    crate::common::fill_pattern(seed, offset, buf);
    for b in buf {
        *b = letter(*b);
    }
}

fn letters(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_letters(seed, offset, &mut v);
    v
}

/// Checks consecutive chunks against the upper-cased letter stream `seed`.
#[derive(Debug)]
struct UpperVerifier {
    seed: u64,
    offset: u64,
    scratch: Vec<u8>,
    first_error: Option<String>,
}

impl UpperVerifier {
    fn new(seed: u64) -> Self {
        UpperVerifier {
            seed,
            offset: 0,
            scratch: Vec::new(),
            first_error: None,
        }
    }

    /// Records the first mismatch and keeps counting.
    fn check(&mut self, data: &[u8]) {
        if self.first_error.is_none() {
            self.scratch.resize(data.len(), 0);
            fill_letters(self.seed, self.offset, &mut self.scratch);
            self.scratch.make_ascii_uppercase();
            if let Some(i) = data.iter().zip(&self.scratch).position(|(a, b)| a != b) {
                self.first_error = Some(format!(
                    "mismatch at offset {}: got {:#04x}, expected {:#04x}",
                    self.offset + i as u64,
                    data[i],
                    self.scratch[i]
                ));
            }
        }
        self.offset += data.len() as u64;
    }
}

/// Reads a FIFO until EOF on a thread, checking it against the upper-cased
/// letter stream; returns (bytes read, first mismatch).
fn upper_reader(
    r: File,
    seed: u64,
    timeout: Duration,
) -> crate::common::Joiner<(u64, Option<String>)> {
    spawn(move || {
        let end = Instant::now() + timeout;
        let mut v = UpperVerifier::new(seed);
        let mut buf = vec![0u8; 256 * KIB];
        loop {
            let k = read_some(&r, &mut buf, end);
            if k == 0 {
                return (v.offset, v.first_error);
            }
            v.check(&buf[..k]);
        }
    })
}

/// Writes `len` bytes of letter stream `seed` (deadline `end`).
fn write_letters(w: &File, seed: u64, len: usize, end: Instant) {
    let mut buf = vec![0u8; 256 * KIB];
    let mut done = 0;
    while done < len {
        let n = buf.len().min(len - done);
        fill_letters(seed, done as u64, &mut buf[..n]);
        write_all(w, &buf[..n], end);
        done += n;
    }
}

/// Reads an output FIFO that forwards ends: opens it until a session with
/// bytes shows (an open while fifod's write side is closed between
/// sessions reads an immediate, empty EOF), then reads to the session's EOF.
fn read_session(path: &Path, timeout: Duration) -> Vec<u8> {
    let end = Instant::now() + timeout;
    loop {
        let r = open_reader(path);
        let got = read_to_eof(&r, end.saturating_duration_since(Instant::now()));
        if !got.is_empty() {
            return got;
        }
        assert!(
            Instant::now() < end,
            "no session came out of {}",
            path.display()
        );
        drop(r);
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------
// Pipelines
// ---------------------------------------------------------------------------

#[test]
fn fifo_through_tr_to_fifo_64_mib_byte_exact() {
    const SEED: u64 = 64;
    const LEN: usize = 64 * MIB;
    let mut d = Daemon::start(
        r#"
[daemon]
shutdown_timeout = "60s"

[fifo.in]
[fifo.out]

[process.upper]
command = ["tr", "a-z", "A-Z"]

[[route]]
from = ["in"]
to = ["upper"]

[[route]]
from = ["upper"]
to = ["out"]
"#,
    );
    let reader = upper_reader(open_reader(&d.fifo("out")), SEED, BULK_TIMEOUT);
    let w = open_writer(&d.fifo("in"));
    write_letters(&w, SEED, LEN, Instant::now() + BULK_TIMEOUT);
    drop(w);
    // tr keeps its last block until its stdin closes: the stop closes it,
    // relays the rest, and the reader gets EOF when fifod is gone.
    d.signal(Signal::SIGTERM);
    let st = d.wait_exit(BULK_TIMEOUT);
    assert_eq!(st.code(), Some(0), "exit {st:?}\n{}", d.log());
    let (n, mismatch) = reader.join(BULK_TIMEOUT);
    assert_eq!(mismatch, None, "output differs");
    assert_eq!(n, LEN as u64, "bytes out of tr\n{}", d.log());
    assert_clean_stats(&d, 0, "upper", LEN as u64);
    assert_clean_stats(&d, 1, "out", LEN as u64);
}

#[test]
fn chain_of_two_processes_cat_then_tr() {
    let mut d = Daemon::start(
        r#"
[fifo.in]
[fifo.out]

[process.first]
command = ["cat"]

[process.second]
command = ["stdbuf", "-o0", "tr", "a-z", "A-Z"]

[[route]]
from = ["in"]
to = ["first"]

[[route]]
from = ["first"]
to = ["second"]

[[route]]
from = ["second"]
to = ["out"]
"#,
    );
    let log = d.log();
    let (first, second) = (started_pids(&log, "first"), started_pids(&log, "second"));
    assert_eq!((first.len(), second.len()), (1, 1), "{log}");
    let w = open_writer(&d.fifo("in"));
    let r = open_reader(&d.fifo("out"));
    let mut total = 0u64;
    // Each message comes out before the next goes in: the chain streams.
    for i in 0..5 {
        let msg = format!("message {i}: hello through a chain\n");
        write_all(&w, msg.as_bytes(), Instant::now() + TIMEOUT);
        let got = read_exact(&r, msg.len(), TIMEOUT);
        assert_eq!(
            String::from_utf8_lossy(&got),
            msg.to_ascii_uppercase(),
            "message {i}"
        );
        total += msg.len() as u64;
    }
    // Then a bulk stream, larger than every pipe and buffer on the way.
    const SEED: u64 = 2;
    const LEN: usize = 3 * MIB;
    let reader = spawn(move || {
        let end = Instant::now() + BULK_TIMEOUT;
        let mut v = UpperVerifier::new(SEED);
        let mut buf = vec![0u8; 64 * KIB];
        while v.offset < LEN as u64 {
            let want = buf.len().min(LEN - v.offset as usize);
            let k = read_some(&r, &mut buf[..want], end);
            assert!(k > 0, "EOF after {} bytes", v.offset);
            v.check(&buf[..k]);
        }
        (v.first_error, r)
    });
    write_letters(&w, SEED, LEN, Instant::now() + BULK_TIMEOUT);
    let (mismatch, r) = reader.join(BULK_TIMEOUT);
    assert_eq!(mismatch, None);
    total += LEN as u64;
    d.stop_ok();
    assert_no_more(&r, "out");
    for (route, sink) in [(0, "first"), (1, "second"), (2, "out")] {
        assert_clean_stats(&d, route, sink, total);
    }
    for pid in [first[0], second[0]] {
        assert!(
            gone_or_zombie(pid),
            "process {pid} still runs after the stop"
        );
    }
}

#[test]
fn process_output_fans_out_to_two_fifos() {
    let mut d = Daemon::start(
        r#"
[fifo.in]
[fifo.a]
[fifo.b]

[process.copy]
command = ["cat"]

[[route]]
from = ["in"]
to = ["copy"]

[[route]]
from = ["copy"]
to = ["a", "b"]
"#,
    );
    const LEN: usize = 300 * KIB;
    let ra = open_reader(&d.fifo("a"));
    let rb = open_reader(&d.fifo("b"));
    let w = open_writer(&d.fifo("in"));
    write_pattern(&w, 9, 0, LEN, Instant::now() + TIMEOUT);
    // Each output holds the whole stream (pipe + 1 MiB buffer): read one
    // after the other.
    let a = read_exact(&ra, LEN, TIMEOUT);
    Verifier::new(9, 0).check(&a).unwrap();
    let b = read_exact(&rb, LEN, TIMEOUT);
    Verifier::new(9, 0).check(&b).unwrap();
    d.stop_ok();
    assert_no_more(&ra, "a");
    assert_no_more(&rb, "b");
    assert_clean_stats(&d, 0, "copy", LEN as u64);
    assert_clean_stats(&d, 1, "a", LEN as u64);
    assert_clean_stats(&d, 1, "b", LEN as u64);
}

// ---------------------------------------------------------------------------
// stderr modes
// ---------------------------------------------------------------------------

const TALK: &str = r#"for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done"#;

fn talk_config(stderr: &str, extra: &str) -> String {
    format!(
        r#"
[fifo.out]
{extra}

[process.talk]
command = ["sh", "-c", "{TALK}"]
stderr = "{stderr}"
restart = "never"

[[route]]
from = ["talk"]
to = ["out"]
"#
    )
}

fn numbered(prefix: &str) -> String {
    (1..=5).map(|i| format!("{prefix}{i}\n")).collect()
}

fn wait_talk_exit(d: &Daemon) {
    wait_log(d, "talk to exit", TIMEOUT, |log| {
        exits(log, "talk")
            .iter()
            .any(|(_, how)| how == "exited with status 0; it will not be restarted")
    });
}

#[test]
fn merged_stderr_keeps_the_order_the_child_wrote_in() {
    let mut d = Daemon::start(&talk_config("merge", ""));
    let r = open_reader(&d.fifo("out"));
    let expected: String = (1..=5).map(|i| format!("out{i}\nerr{i}\n")).collect();
    let got = read_exact(&r, expected.len(), TIMEOUT);
    assert_eq!(String::from_utf8_lossy(&got), expected);
    wait_talk_exit(&d);
    d.stop_ok();
    assert_no_more(&r, "out");
    assert_clean_stats(&d, 0, "out", expected.len() as u64);
}

#[test]
fn separate_stderr_is_its_own_source() {
    let toml = talk_config("separate", "[fifo.err]")
        + r#"
[[route]]
from = ["talk.stderr"]
to = ["err"]
"#;
    let mut d = Daemon::start(&toml);
    let out = open_reader(&d.fifo("out"));
    let err = open_reader(&d.fifo("err"));
    let (o, e) = (numbered("out"), numbered("err"));
    assert_eq!(
        String::from_utf8_lossy(&read_exact(&out, o.len(), TIMEOUT)),
        o
    );
    assert_eq!(
        String::from_utf8_lossy(&read_exact(&err, e.len(), TIMEOUT)),
        e
    );
    wait_talk_exit(&d);
    d.stop_ok();
    assert_no_more(&out, "out");
    assert_no_more(&err, "err");
    assert_clean_stats(&d, 0, "out", o.len() as u64);
    assert_clean_stats(&d, 1, "err", e.len() as u64);
}

#[test]
fn logged_stderr_lines_appear_in_fifods_log() {
    let toml = r#"
[fifo.out]

[process.talk]
command = ["sh", "-c", "for i in 1 2 3; do echo out$i; echo err$i >&2; done; printf 'last words' >&2"]
stderr = "log"
restart = "never"

[[route]]
from = ["talk"]
to = ["out"]
"#;
    let mut d = Daemon::start(toml);
    let r = open_reader(&d.fifo("out"));
    let o = "out1\nout2\nout3\n";
    assert_eq!(
        String::from_utf8_lossy(&read_exact(&r, o.len(), TIMEOUT)),
        o
    );
    let log = wait_log(&d, "the unterminated last line", TIMEOUT, |log| {
        log.contains("talk.stderr: last words")
    });
    let logged: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("talk.stderr: "))
        .collect();
    let texts: Vec<&str> = logged
        .iter()
        .map(|l| &l[l.find("talk.stderr: ").unwrap() + "talk.stderr: ".len()..])
        .collect();
    assert_eq!(texts, ["err1", "err2", "err3", "last words"], "{log}");
    for l in &logged {
        assert!(l.contains(" WARN "), "not logged at WARN: {l:?}");
        assert_eq!(
            messages(l).first().copied(),
            Some(&l[l.find("talk.stderr: ").unwrap()..]),
            "the message must start with the process's name: {l:?}"
        );
    }
    wait_talk_exit(&d);
    d.stop_ok();
    assert_no_more(&r, "out");
    assert_clean_stats(&d, 0, "out", o.len() as u64);
}

// ---------------------------------------------------------------------------
// Restarts
// ---------------------------------------------------------------------------

#[test]
fn crashing_child_is_restarted_with_a_doubling_back_off() {
    let sb = Sandbox::new();
    sb.write_config(
        r#"
[process.crash]
command = ["sh", "-c", "date +%s%N >> '{ROOT}/starts'; exit 1"]
restart_delay = "50ms"
"#,
    );
    let starts_file = sb.path("starts");
    let mut d = Daemon::start_with(sb, &Launch::default());
    let read_starts = || -> Vec<u128> {
        fs::read_to_string(&starts_file)
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().parse().expect("date +%s%N"))
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(20), || read_starts().len() >= 6),
        "fewer than 6 starts\n{}",
        d.log()
    );
    let log = wait_log(&d, "5 restarts", TIMEOUT, |log| {
        exits(log, "crash").len() >= 6 && started_pids(log, "crash").len() >= 6
    });
    d.stop_ok();
    let starts = read_starts();
    let delays_ms: [u128; 5] = [50, 100, 200, 400, 800];

    // What the log announced, exactly.
    let announced: Vec<String> = exits(&log, "crash")
        .into_iter()
        .take(5)
        .map(|(_, how)| how)
        .collect();
    let expected: Vec<String> = delays_ms
        .iter()
        .map(|ms| format!("exited with status 1; restarting in {ms}ms"))
        .collect();
    assert_eq!(announced, expected, "{log}");
    let pids = started_pids(&log, "crash");
    let mut distinct = pids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), pids.len(), "a pid started twice? {pids:?}");

    // What actually happened: each gap between two starts is at least the
    // announced delay, and not much more.
    let gaps_ms: Vec<f64> = starts
        .windows(2)
        .take(5)
        .map(|w| (w[1] - w[0]) as f64 / 1e6)
        .collect();
    for (i, (&gap, &delay)) in gaps_ms.iter().zip(&delays_ms).enumerate() {
        assert!(
            gap >= delay as f64,
            "restart {} came after {gap:.1} ms, before its {delay} ms back-off; gaps {gaps_ms:?}",
            i + 1
        );
        assert!(
            gap < delay as f64 + 1500.0,
            "restart {} came after {gap:.1} ms for a {delay} ms back-off; gaps {gaps_ms:?}",
            i + 1
        );
    }
    // Roughly doubling: the last gaps, where the delay dominates the cost
    // of starting `sh`, grow by a factor near 2.
    let ratio = gaps_ms[4] / gaps_ms[3];
    assert!(
        (1.2..=2.8).contains(&ratio),
        "800 ms / 400 ms back-offs gave gaps {gaps_ms:?} (ratio {ratio:.2})"
    );
}

#[test]
fn restart_never_runs_the_process_once() {
    let sb = Sandbox::new();
    sb.write_config(
        r#"
[process.once]
command = ["sh", "-c", "echo run >> '{ROOT}/once'; exit 3"]
restart = "never"

# A clock: restarts after 50, 100, 200, 400 ms.
[process.clock]
command = ["sh", "-c", "exit 1"]
restart_delay = "50ms"
"#,
    );
    let once_file = sb.path("once");
    let mut d = Daemon::start_with(sb, &Launch::default());
    let log = wait_log(&d, "once to exit", TIMEOUT, |log| {
        !exits(log, "once").is_empty()
    });
    let pids = started_pids(&log, "once");
    assert_eq!(pids.len(), 1, "{log}");
    assert_eq!(
        exits(&log, "once"),
        [(
            pids[0],
            "exited with status 3; it will not be restarted".to_string()
        )],
        "{log}"
    );
    let line = lines_with_message(
        &log,
        &format!(
            "process once (pid {}) exited with status 3; it will not be restarted",
            pids[0]
        ),
    );
    assert!(
        line.len() == 1 && line[0].contains(" WARN "),
        "a failure is a warning: {line:?}"
    );
    // Let the clock tick four more times (at least 750 ms, much more than
    // the default 100 ms back-off once would have had).
    let ticks = started_pids(&log, "clock").len();
    let log = wait_log(&d, "the clock", TIMEOUT, |log| {
        started_pids(log, "clock").len() >= ticks + 4
    });
    assert_eq!(started_pids(&log, "once").len(), 1, "{log}");
    assert_eq!(exits(&log, "once").len(), 1, "{log}");
    assert_eq!(fs::read_to_string(&once_file).unwrap(), "run\n");
    d.stop_ok();
    assert_eq!(started_pids(&d.log(), "once").len(), 1);
}

#[test]
fn bytes_for_a_sink_that_is_down_wait_for_its_restart() {
    let mut d = Daemon::start(
        r#"
[fifo.in]
[fifo.out]

[process.one]
command = ["sh", "-c", "IFS= read -r line; echo \"got:$line\"; exit 1"]
restart_delay = "1s"

[[route]]
from = ["in"]
to = ["one"]

[[route]]
from = ["one"]
to = ["out"]
"#,
    );
    let w = open_writer(&d.fifo("in"));
    let r = open_reader(&d.fifo("out"));
    write_all(&w, b"first\n", Instant::now() + TIMEOUT);
    assert_eq!(read_exact(&r, 10, TIMEOUT), b"got:first\n");
    let log = wait_log(&d, "the first instance to exit", TIMEOUT, |log| {
        !exits(log, "one").is_empty()
    });
    assert_eq!(
        exits(&log, "one")[0].1,
        "exited with status 1; restarting in 1s"
    );
    // While it is down: two pieces, taken by fifod and held.
    write_all(&w, b"second-a,", Instant::now() + TIMEOUT);
    write_all(&w, b"second-b\n", Instant::now() + TIMEOUT);
    assert!(wait_until(TIMEOUT, || pipe_pending(&w) == 0));
    assert_eq!(
        started_pids(&d.log(), "one").len(),
        1,
        "restarted too early for this test: {}",
        d.log()
    );
    assert_eq!(read_exact(&r, 22, TIMEOUT), b"got:second-a,second-b\n");
    assert_eq!(started_pids(&d.log(), "one").len(), 2, "{}", d.log());
    d.stop_ok();
    assert_no_more(&r, "out");
    assert_clean_stats(&d, 0, "one", 24);
    assert_clean_stats(&d, 1, "out", 32);
}

/// 20 processes, each failing `runs - 1` times with a 1 ms back-off that
/// doubles (1, 2, .. 512 ms), then exiting 0 for good; all with three pipes.
fn restarting_config(runs: u32) -> String {
    let names: Vec<String> = (0..20).map(|k| format!("\"t{k}\"")).collect();
    let mut toml = String::from("[fifo.in]\n[fifo.out]\n");
    for k in 0..20 {
        toml += &format!(
            r#"
[process.t{k}]
command = ["sh", "-c", "echo x >> '{{ROOT}}/t{k}.count'; [ $(wc -l < '{{ROOT}}/t{k}.count') -ge {runs} ] && exit 0; exit 1"]
stderr = "log"
restart_delay = "1ms"
"#
        );
    }
    toml += &format!(
        "\n[[route]]\nfrom = [\"in\"]\nto = [{0}]\n\n[[route]]\nfrom = [{0}]\nto = [\"out\"]\n",
        names.join(", ")
    );
    toml
}

/// Runs the config until every process is down for good; returns fifod's
/// fds by kind, once idle. Checks every run and no child is left.
fn run_restarting(runs: u32) -> Vec<String> {
    let mut d = Daemon::start(&restarting_config(runs));
    let log = wait_log(
        &d,
        "every process to finish",
        Duration::from_secs(60),
        |log| {
            (0..20).all(|k| {
                exits(log, &format!("t{k}"))
                    .iter()
                    .any(|(_, how)| how == "exited with status 0; it will not be restarted")
            })
        },
    );
    for k in 0..20 {
        let name = format!("t{k}");
        assert_eq!(
            started_pids(&log, &name).len(),
            runs as usize,
            "{name}\n{log}"
        );
        let hows: Vec<String> = exits(&log, &name).into_iter().map(|(_, h)| h).collect();
        let mut expected: Vec<String> = (0..runs - 1)
            .map(|i| format!("exited with status 1; restarting in {}ms", 1u32 << i))
            .collect();
        expected.push("exited with status 0; it will not be restarted".to_string());
        assert_eq!(hows, expected, "{name}");
        let count = fs::read_to_string(d.sb.path(&format!("{name}.count"))).unwrap();
        assert_eq!(count.lines().count(), runs as usize, "{name}");
    }
    assert!(!log.contains("cannot start"), "a start failed\n{log}");
    let pid = d.pid() as i32;
    wait_idle(d.pid(), &[], TIMEOUT);
    let fds = fd_kinds(pid, d.sb.root());
    let left = children_of(pid);
    assert!(
        left.is_empty(),
        "fifod has children left (pid, state; Z = zombie): {left:?}"
    );
    d.stop_ok();
    fds
}

#[test]
fn two_hundred_restarts_leak_no_fd_and_no_zombie() {
    // The same daemon with no restart at all is the reference.
    let reference = run_restarting(1);
    let after = run_restarting(11);
    assert_eq!(
        after, reference,
        "fifod's fds after 200 restarts differ from those after none"
    );
}

// ---------------------------------------------------------------------------
// A child that does not read, or stops early
// ---------------------------------------------------------------------------

fn sleeper_config(when_full: &str) -> String {
    format!(
        r#"
[daemon]
shutdown_timeout = "1s"
# the sizes below count on 64 KiB pipes
pipe_size = "64KiB"

[fifo.in]

[process.sink]
command = ["sleep", "1000"]

[[route]]
from = ["in"]
to = ["sink"]
buffer = "16KiB"
when_full = "{when_full}"
"#
    )
}

#[test]
fn child_that_never_reads_blocks_writers_under_block() {
    let mut d = Daemon::start(&sleeper_config("block"));
    let w = open_writer(&d.fifo("in"));
    let mut written = write_until_stalled(&w, 3, 64 * MIB as u64, Duration::from_millis(300));
    // Once fifod is idle (nothing more to read: it paused the input), the
    // writer still cannot write.
    let chunk = pattern(99, 0, 4096);
    loop {
        d.wait_idle(&[]);
        match try_write(&w, &chunk) {
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("write: {e}"),
        }
        assert!(written < 64 * MIB as u64, "no backpressure");
    }
    // Input pipe + route buffer + the child's stdin pipe, at most.
    assert!(
        written <= (64 + 16 + 64) * KIB as u64,
        "{written} bytes went in: more than the pipes and the buffer hold"
    );
    assert!(
        !d.log().contains("dropped"),
        "bytes dropped under block while running\n{}",
        d.log()
    );
    d.stop_ok();
    let log = d.log();
    let s = d.stats(0, "sink");
    assert_eq!(s.dropped, 0, "nothing is dropped under block\n{log}");
    assert_eq!(
        s.accepted + left_unread(&log, "in"),
        written,
        "every byte written was either taken or left in the input\n{log}"
    );
    assert!(s.delivered <= 64 * KIB as u64, "{s:?}");
    drop(w);
}

#[test]
fn child_that_never_reads_gets_counted_drops_under_drop_newest() {
    let mut d = Daemon::start(&sleeper_config("drop-newest"));
    let pid = started_pids(&d.log(), "sink")[0];
    let w = open_writer(&d.fifo("in"));
    const LEN: usize = MIB;
    // Never blocked for long: fifod reads on and drops.
    write_pattern(&w, 4, 0, LEN, Instant::now() + TIMEOUT);
    d.wait_idle(&[&w]);
    // What sits in the child's stdin pipe (a second reader, which reads
    // nothing, only counts it).
    let stdin_pipe = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{pid}/fd/0"))
        .expect("open the child's stdin pipe");
    let in_pipe = pipe_pending(&stdin_pipe) as u64;
    assert!(in_pipe > 0 && in_pipe <= 64 * KIB as u64, "{in_pipe}");
    // fifod holds a full buffer; the rest was dropped, and says so.
    let dropped = LEN as u64 - in_pipe - 16 * KIB as u64;
    let total = format!("; {dropped} dropped in total");
    let log = wait_log(&d, &total, TIMEOUT, |log| {
        messages(log).iter().any(|m| {
            m.starts_with("route[0] -> sink: dropped ")
                && m.contains("(when_full = drop-newest)")
                && m.ends_with(&total)
        })
    });
    d.stop_ok();
    let s = d.stats(0, "sink");
    assert_eq!(
        (s.accepted, s.delivered, s.dropped, s.undelivered),
        (LEN as u64, in_pipe, dropped, 16 * KIB as u64),
        "{log}\n--- final log ---\n{}",
        d.log()
    );
}

#[test]
fn a_sink_killed_with_bytes_waiting_keeps_them_for_its_restart() {
    // Its stdin pipe full and bytes held for it: fifod watches the pipe, so
    // the kill reaches it as a failed write (EPIPE) before the exit does.
    let mut d = Daemon::start(&sleeper_config("block"));
    let pid = started_pids(&d.log(), "sink")[0];
    let w = open_writer(&d.fifo("in"));
    const LEN: usize = 72 * KIB;
    write_pattern(&w, 6, 0, LEN, Instant::now() + TIMEOUT);
    status_until(&d, "8 KiB held beyond the child's full pipe", |st| {
        num(sink_entry(st, 0, "sink"), "held") == 8 * KIB as u64
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let log = wait_log(&d, "the restart", TIMEOUT, |log| {
        started_pids(log, "sink").len() == 2
    });
    assert!(
        !log.contains("closed its stdin") && !log.contains("dropped"),
        "a process that died was taken for one that closed its stdin\n{log}"
    );
    // The held bytes went to the new instance.
    let st = status_until(&d, "the held bytes in the new instance", |st| {
        num(sink_entry(st, 0, "sink"), "held") == 0
    });
    assert_eq!(num(sink_entry(&st, 0, "sink"), "dropped"), 0, "{st}");
    d.stop_ok();
    let n = LEN as u64;
    assert_stats(&d, 0, "sink", (n, n, 0, 0));
}

#[test]
fn children_that_close_early_do_not_stop_other_routes() {
    let mut d = Daemon::start(
        r#"
[daemon]
shutdown_timeout = "1s"
log_level = "debug"

[fifo.silent]
[fifo.in]
[fifo.cut]
[fifo.other-in]
[fifo.other-out]

[process.closer]
command = ["sh", "-c", "exec >&- 2>&-; exec sleep 1000"]

[process.head]
command = ["head", "-c", "10"]

[[route]]
from = ["closer"]
to = ["silent"]

[[route]]
from = ["in"]
to = ["head"]

[[route]]
from = ["head"]
to = ["cut"]

[[route]]
from = ["other-in"]
to = ["other-out"]
"#,
    );
    let closer = started_pids(&d.log(), "closer")[0];
    wait_log(&d, "closer's stdout to end", TIMEOUT, |log| {
        messages(log).contains(&"closer: end of session")
    });
    let ow = open_writer(&d.fifo("other-in"));
    let or = open_reader(&d.fifo("other-out"));
    write_all(&ow, b"still here\n", Instant::now() + TIMEOUT);
    assert_eq!(read_exact(&or, 11, TIMEOUT), b"still here\n");

    // head takes 10 bytes and leaves: the rest is dropped, counted.
    let w = open_writer(&d.fifo("in"));
    let cut = open_reader(&d.fifo("cut"));
    let data = pattern(5, 0, 300);
    write_all(&w, &data[..100], Instant::now() + TIMEOUT);
    assert_eq!(read_exact(&cut, 10, TIMEOUT), &data[..10]);
    wait_log(&d, "head to exit", TIMEOUT, |log| {
        exits(log, "head")
            .iter()
            .any(|(_, how)| how == "exited with status 0; it will not be restarted")
    });
    write_all(&w, &data[100..], Instant::now() + TIMEOUT);
    assert!(wait_until(TIMEOUT, || pipe_pending(&w) == 0));

    write_all(&ow, b"and here\n", Instant::now() + TIMEOUT);
    assert_eq!(read_exact(&or, 9, TIMEOUT), b"and here\n");
    assert!(
        matches!(proc_stat(closer), Some((s, _, _)) if s != 'Z'),
        "the process that closed its stdout still runs"
    );
    assert_eq!(d.try_exited(), None);
    d.stop_ok();
    assert_no_more(&cut, "cut");
    assert_no_more(&or, "other-out");
    let log = d.log();
    assert_clean_stats(&d, 0, "silent", 0);
    let s = d.stats(1, "head");
    assert_eq!(s.accepted, 300, "{log}");
    assert!((10..=100).contains(&s.delivered), "{s:?}\n{log}");
    assert_eq!(s.dropped, 300 - s.delivered, "{log}");
    assert_clean_stats(&d, 2, "cut", 10);
    assert_clean_stats(&d, 3, "other-out", 20);
}

// ---------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------

#[test]
fn children_that_ignore_sigterm_are_killed_after_the_grace() {
    let sb = Sandbox::new();
    sb.write_config(
        r#"
[daemon]
shutdown_timeout = "1s"

[fifo.in]

[process.stubborn]
command = ["sh", "-c", "trap '' TERM; sleep 1000 & echo $! > '{ROOT}/grandchild.tmp'; mv '{ROOT}/grandchild.tmp' '{ROOT}/grandchild'; wait"]

[[route]]
from = ["in"]
to = ["stubborn"]
"#,
    );
    let gc_file = sb.path("grandchild");
    let mut d = Daemon::start_with(sb, &Launch::default());
    let child = started_pids(&d.log(), "stubborn")[0];
    assert!(
        wait_until(TIMEOUT, || gc_file.exists()),
        "the grandchild's pid never appeared"
    );
    let grandchild: i32 = fs::read_to_string(&gc_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The premise: both ignore SIGTERM, and both are in the child's group.
    assert!(
        wait_until(TIMEOUT, || fs::read_link(format!("/proc/{grandchild}/exe"))
            .is_ok_and(|p| p.ends_with("sleep"))),
        "the grandchild never ran sleep"
    );
    for pid in [child, grandchild] {
        let ign = u64::from_str_radix(&status_field(pid, "SigIgn"), 16).unwrap();
        assert_ne!(
            ign & (1 << (libc::SIGTERM - 1)),
            0,
            "pid {pid} ignores SIGTERM"
        );
        assert_eq!(proc_stat(pid).map(|s| s.2), Some(child), "pgrp of {pid}");
    }

    let (st, took) = d.timed_stop(STOP_TIMEOUT);
    let log = d.log();
    assert_eq!(st.code(), Some(0), "{log}");
    assert!(
        took >= Duration::from_secs(2),
        "stopped after {took:?}: before the 1 s drain and the 1 s grace\n{log}"
    );
    let m = messages(&log);
    assert!(
        m.contains(&format!("sending SIGTERM to process stubborn (pid {child})").as_str()),
        "{log}"
    );
    assert!(
        m.contains(&"process stubborn did not exit: sending SIGKILL"),
        "{log}"
    );
    assert!(
        proc_stat(child).is_none(),
        "the child (pid {child}) is still there: {:?}",
        proc_stat(child)
    );
    assert!(
        wait_until(TIMEOUT, || gone_or_zombie(grandchild)),
        "the grandchild (pid {grandchild}) still runs: {:?}",
        proc_stat(grandchild)
    );
}

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

#[test]
fn missing_program_is_reported_by_check_and_run() {
    let text = r#"[daemon]
dir = "{RUN}"

[fifo.in]

[process.p]
command = ["nosuch", "--flag"]

[[route]]
from = ["in"]
to = ["p"]
"#;
    let sb = Sandbox::new();
    let cfg = sb.write_raw_config(text);
    let (line, col) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find("\"nosuch\"").map(|c| (i + 1, c + 1)))
        .unwrap();
    assert_eq!((line, col), (7, 12));
    let expected = format!(
        "{}:{line}:{col}: process.p.command: program \"nosuch\" not found on PATH",
        cfg.display()
    );

    let out = sb.run_cmd("check", &Launch::default());
    out.assert_code(1);
    assert!(
        out.stderr.lines().any(|l| l == expected),
        "missing {expected:?} in:\n{}",
        out.stderr
    );

    let out = sb.run_cmd("run", &Launch::default());
    out.assert_code(78);
    assert!(
        out.stderr.lines().any(|l| l == expected),
        "missing {expected:?} in:\n{}",
        out.stderr
    );
    assert!(
        !sb.run_dir().exists(),
        "run touched the filesystem with an invalid config"
    );
}

// ---------------------------------------------------------------------------
// What a child inherits
// ---------------------------------------------------------------------------

#[test]
fn child_gets_default_signals_only_std_fds_and_a_clean_env() {
    let sb = Sandbox::new();
    fs::create_dir(sb.path("work")).unwrap();
    sb.write_config(
        r#"
[fifo.in]
[fifo.out]

[process.probe]
command = ["cat"]
cwd = "{ROOT}/work"
env = { PROBE_VAR = "hello world" }

[[route]]
from = ["in"]
to = ["probe"]

[[route]]
from = ["probe"]
to = ["out"]
"#,
    );
    let private = [
        "NOTIFY_SOCKET",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
    ];
    let mut launch = Launch::default();
    for (k, v) in [
        ("NOTIFY_SOCKET", "/nonexistent/notify.sock"),
        ("LISTEN_FDS", "1"),
        ("LISTEN_PID", "1"),
        ("LISTEN_FDNAMES", "none"),
        ("WATCHDOG_USEC", "100000000"),
        ("WATCHDOG_PID", "1"),
        ("FIFOD_INHERITED", "yes"),
    ] {
        launch.env.push((k.to_string(), v.into()));
    }
    // fifod itself starts with SIGUSR1 ignored (as under `nohup` for
    // SIGHUP): its children must not inherit that.
    launch.bin = Some(wrapper_script(&sb, "ignore-usr1", "trap '' USR1\n", ""));
    let root = sb.root().canonicalize().unwrap();
    let mut d = Daemon::start_with(sb, &launch);
    let pid = started_pids(&d.log(), "probe")[0];
    let fifod_ign = u64::from_str_radix(&status_field(d.pid() as i32, "SigIgn"), 16).unwrap();
    assert_ne!(
        fifod_ign & (1 << (libc::SIGUSR1 - 1)),
        0,
        "premise: fifod ignores SIGUSR1"
    );

    // It is wired: bytes go through it.
    let w = open_writer(&d.fifo("in"));
    let r = open_reader(&d.fifo("out"));
    write_all(&w, b"ping\n", Instant::now() + TIMEOUT);
    assert_eq!(read_exact(&r, 5, TIMEOUT), b"ping\n");
    // So cat runs (past exec); inspect it.
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/exe"))
            .unwrap()
            .file_name()
            .unwrap(),
        "cat"
    );
    let (state, ppid, pgrp) = proc_stat(pid).unwrap();
    assert_ne!(state, 'Z');
    assert_eq!(ppid, d.pid() as i32, "fifod is the parent");
    assert_eq!(pgrp, pid, "the child leads its own process group");
    for key in ["SigBlk", "SigIgn"] {
        let v = status_field(pid, key);
        let mask = u64::from_str_radix(&v, 16).unwrap();
        let signals: Vec<u32> = (0..64)
            .filter(|b| mask & (1 << b) != 0)
            .map(|b| b + 1)
            .collect();
        assert!(
            !v.is_empty() && mask == 0,
            "{key} of the child is {v} (signals {signals:?}), expected all zeros"
        );
    }
    let fds = fd_targets(pid);
    assert_eq!(
        fds.keys().copied().collect::<Vec<_>>(),
        [0, 1, 2],
        "the child has fds {fds:?}"
    );
    assert!(fds[&0].starts_with("pipe:"), "{fds:?}");
    assert!(fds[&1].starts_with("pipe:"), "{fds:?}");
    assert_ne!(fds[&0], fds[&1], "{fds:?}");
    assert_eq!(
        fds[&2], fds[&1],
        "stderr merged into stdout's pipe: {fds:?}"
    );

    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
    let env: BTreeMap<String, String> = environ
        .split(|&b| b == 0)
        .filter(|e| !e.is_empty())
        .filter_map(|e| {
            let e = String::from_utf8_lossy(e);
            let (k, v) = e.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect();
    for k in private {
        assert!(!env.contains_key(k), "{k} passed on to the child: {env:?}");
    }
    assert_eq!(
        env.get("PROBE_VAR").map(String::as_str),
        Some("hello world")
    );
    assert_eq!(env.get("FIFOD_INHERITED").map(String::as_str), Some("yes"));
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        root.join("work")
    );
    d.stop_ok();
    assert_no_more(&r, "out");
}

// ---------------------------------------------------------------------------
// fifod's own stdin and stdout
// ---------------------------------------------------------------------------

/// fifod run with pipes on its stdin and stdout, killed on drop.
#[derive(Debug)]
struct Piped {
    sb: Sandbox,
    child: Child,
    log_path: PathBuf,
}

impl Piped {
    fn start(toml: &str) -> (Piped, ChildStdin, ChildStdout) {
        let sb = Sandbox::new();
        sb.write_config(toml);
        let (mut cmd, _out, log_path) = sb.command(&sb.cmd_args("run"), &Launch::default());
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn fifod");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let mut p = Piped {
            sb,
            child,
            log_path,
        };
        let ready = wait_until(TIMEOUT, || {
            p.log().contains("ready:") || !matches!(p.child.try_wait(), Ok(None))
        });
        assert!(
            ready && p.log().contains("ready:"),
            "fifod not ready\n{}",
            p.log()
        );
        (p, stdin, stdout)
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stop_ok(&mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGTERM,
        )
        .unwrap();
        let st = wait_child(&mut self.child, STOP_TIMEOUT).expect("fifod did not stop");
        assert_eq!(st.code(), Some(0), "{st:?}\n{}", self.log());
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a consumer of fifod's stdout got so far.
#[derive(Debug, Default)]
struct Consumed {
    bytes: Mutex<Vec<u8>>,
    eof: AtomicBool,
}

/// Reads a pipe to EOF on a thread (blocking reads; the thread ends when
/// the last writer goes, fifod's exit included).
fn consume(mut r: ChildStdout) -> Arc<Consumed> {
    let c = Arc::new(Consumed::default());
    let c2 = Arc::clone(&c);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * KIB];
        loop {
            let n = r.read(&mut buf).expect("read fifod's stdout");
            if n == 0 {
                c2.eof.store(true, Ordering::SeqCst);
                return;
            }
            c2.bytes.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    c
}

/// Writes `data` into fifod's stdin on a thread and closes it.
fn produce(mut stdin: ChildStdin, data: Vec<u8>) {
    spawn(move || {
        stdin.write_all(&data).expect("write fifod's stdin");
    })
    .join(TIMEOUT);
}

/// Waits for the consumer's EOF, which must come while fifod still runs.
fn expect_eof_while_running(p: &mut Piped, c: &Consumed, len: usize) -> Vec<u8> {
    let eof = wait_until(TIMEOUT, || c.eof.load(Ordering::SeqCst));
    let running = p.running();
    let got = c.bytes.lock().unwrap().clone();
    assert!(
        eof,
        "the consumer got {} of {len} bytes and no EOF within {TIMEOUT:?} (fifod running: {running})\n{}",
        got.len(),
        p.log()
    );
    assert!(
        running,
        "the consumer got EOF only because fifod exited\n{}",
        p.log()
    );
    got
}

#[test]
fn stdin_to_stdout_with_hold_keeps_serving_after_stdin_eof() {
    let (mut p, stdin, stdout) = Piped::start(
        r#"
[fifo.in]
[fifo.out]

[[route]]
from = ["stdin"]
to = ["stdout"]

[[route]]
from = ["in"]
to = ["out"]
"#,
    );
    let consumer = consume(stdout);
    const LEN: usize = 700 * KIB;
    produce(stdin, pattern(21, 0, LEN));
    assert!(
        wait_until(TIMEOUT, || p.log().contains("stdin reached EOF")),
        "{}",
        p.log()
    );
    // Only that source ended: the daemon and its other routes go on.
    assert!(p.running(), "fifod stopped at stdin's EOF\n{}", p.log());
    let w = open_writer(&p.sb.fifo("in"));
    let r = open_reader(&p.sb.fifo("out"));
    write_all(&w, b"after eof\n", Instant::now() + TIMEOUT);
    assert_eq!(read_exact(&r, 10, TIMEOUT), b"after eof\n");
    p.stop_ok();
    assert!(
        wait_until(TIMEOUT, || consumer.eof.load(Ordering::SeqCst)),
        "no EOF after fifod exited"
    );
    let got = consumer.bytes.lock().unwrap().clone();
    assert_eq!(got.len(), LEN);
    Verifier::new(21, 0).check(&got).unwrap();
    assert_stats_in(&p.log(), 0, "stdout", (LEN as u64, LEN as u64, 0, 0));
}

#[test]
fn stdin_to_stdout_with_forward_passes_the_end_on() {
    let (mut p, stdin, stdout) = Piped::start(
        r#"
[[route]]
from = ["stdin"]
to = ["stdout"]
eof = "forward"
"#,
    );
    let consumer = consume(stdout);
    const LEN: usize = 333 * KIB;
    produce(stdin, pattern(22, 0, LEN));
    let got = expect_eof_while_running(&mut p, &consumer, LEN);
    assert_eq!(got.len(), LEN);
    Verifier::new(22, 0).check(&got).unwrap();
    p.stop_ok();
    assert_stats_in(&p.log(), 0, "stdout", (LEN as u64, LEN as u64, 0, 0));
}

#[test]
fn shell_pipeline_through_a_process_forwards_the_end_to_stdout() {
    // producer | fifod (stdin -> tr -> stdout) | consumer
    let (mut p, stdin, stdout) = Piped::start(
        r#"
[process.upper]
command = ["tr", "a-z", "A-Z"]

[[route]]
from = ["stdin"]
to = ["upper"]
eof = "forward"

[[route]]
from = ["upper"]
to = ["stdout"]
eof = "forward"
"#,
    );
    let consumer = consume(stdout);
    const LEN: usize = 500 * KIB;
    produce(stdin, letters(31, 0, LEN));
    // The consumer sees the end while fifod still runs.
    let got = expect_eof_while_running(&mut p, &consumer, LEN);
    assert_eq!(got.len(), LEN, "{}", p.log());
    let mut expected = letters(31, 0, LEN);
    expected.make_ascii_uppercase();
    assert!(got == expected, "the output is not the upper-cased input");
    p.stop_ok();
    for (route, sink) in [(0, "upper"), (1, "stdout")] {
        assert_stats_in(&p.log(), route, sink, (LEN as u64, LEN as u64, 0, 0));
    }
}

// ---------------------------------------------------------------------------
// Passing ends on through a process
// ---------------------------------------------------------------------------

#[test]
fn each_writer_session_comes_out_as_one_gzip_stream() {
    let mut d = Daemon::start(
        r#"
[fifo.in]
[fifo.out]

[process.gz]
command = ["gzip", "-c"]
restart = "always"

[[route]]
from = ["in"]
to = ["gz"]
eof = "forward"

[[route]]
from = ["gz"]
to = ["out"]
eof = "forward"
"#,
    );
    let sessions = [(41u64, 300 * KIB + 7), (42u64, 123_457)];
    let mut total_in = 0u64;
    let mut total_out = 0u64;
    for (i, &(seed, len)) in sessions.iter().enumerate() {
        let w = open_writer(&d.fifo("in"));
        write_pattern(&w, seed, 0, len, Instant::now() + TIMEOUT);
        drop(w);
        let z = read_session(&d.fifo("out"), TIMEOUT);
        assert_eq!(&z[..2], &[0x1f, 0x8b], "session {i}: not gzip");
        total_out += z.len() as u64;
        let plain = gunzip(z);
        assert_eq!(plain.len(), len, "session {i}\n{}", d.log());
        Verifier::new(seed, 0)
            .check(&plain)
            .unwrap_or_else(|e| panic!("session {i}: {e}"));
        total_in += len as u64;
    }
    // A fresh gzip served the second session.
    let log = d.log();
    let pids = started_pids(&log, "gz");
    assert!(pids.len() >= 2 && pids[0] != pids[1], "{log}");
    let first_exit = &exits(&log, "gz")[0];
    assert_eq!(
        first_exit,
        &(
            pids[0],
            "exited with status 0; restarting in 100ms".to_string()
        ),
        "{log}"
    );
    d.stop_ok();
    assert_clean_stats(&d, 0, "gz", total_in);
    assert_clean_stats(&d, 1, "out", total_out);
}

/// `clean_env = true` starts a process from an empty environment: what its
/// `env` names and a `PATH`, none of fifod's own variables.
#[test]
fn a_process_with_clean_env_sees_only_what_its_env_names() {
    let sb = Sandbox::new();
    sb.write_config(
        r#"
[fifo.clean]
[fifo.inherited]

[process.c]
command = ["sh", "-c", "echo mark=${FIFOD_TEST_MARK:-none} own=$OWN path=$PATH end; exec sleep 60"]
clean_env = true
env = { OWN = "yes" }
restart = "never"

[process.i]
command = ["sh", "-c", "echo mark=${FIFOD_TEST_MARK:-none} own=$OWN end; exec sleep 60"]
env = { OWN = "yes" }
restart = "never"

[[route]]
from = ["c"]
to = ["clean"]

[[route]]
from = ["i"]
to = ["inherited"]
"#,
    );
    let launch = Launch {
        env: vec![("FIFOD_TEST_MARK".into(), "from fifod".into())],
        ..Launch::default()
    };
    let mut d = Daemon::start_with(sb, &launch);
    let read_line = |name: &str| {
        let r = open_reader(&d.fifo(name));
        let mut line = Vec::new();
        let end = std::time::Instant::now() + TIMEOUT;
        let mut buf = [0u8; 256];
        while !line.ends_with(b"end\n") {
            let n = read_some(&r, &mut buf, end);
            assert!(n > 0, "EOF after {:?}", String::from_utf8_lossy(&line));
            line.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&line).to_string()
    };
    assert_eq!(
        read_line("clean"),
        "mark=none own=yes path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin end\n"
    );
    assert_eq!(read_line("inherited"), "mark=from fifod own=yes end\n");
    d.stop_ok();
}
