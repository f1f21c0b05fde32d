//! The order of a stop: a pipeline drains stage by stage, a process that is
//! down does not hold up the others, a pure producer is stopped at once,
//! what a process leaves in its group dies with it; and line routes keep
//! flowing through a small buffer and count an unfinished line at stop.

use std::fs::File;
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::poll::PollFlags;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::{
    Daemon, Guarded, Joiner, KIB, MIB, STOP_TIMEOUT, TIMEOUT, assert_no_more, assert_stats, exits,
    gunzip, live_running, messages, open_reader, open_writer, pipe_pending, poll_one, proc_stat,
    read_exact, read_some, read_to_eof, spawn, started_pids, wait_log, wait_until, write_all,
    write_until_stalled,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Live processes running `sleep 777` in process group `pgid`.
fn sleeps_in_group(pgid: i32) -> Vec<i32> {
    live_running(b"sleep\x00777\x00")
        .into_iter()
        .filter(|&(_, pgrp)| pgrp == pgid)
        .map(|(pid, _)| pid)
        .collect()
}

/// Sends SIGTERM; waits for the exit; returns (exit code, time it took, log).
fn timed_stop(d: &mut Daemon) -> (Option<i32>, Duration, String) {
    let (st, took) = d.timed_stop(STOP_TIMEOUT);
    (st.code(), took, d.log())
}

/// Reads `f` to EOF on a thread, counting the bytes as they come.
fn counting_reader(f: File, timeout: Duration) -> (Arc<AtomicUsize>, Joiner<Vec<u8>>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&seen);
    let j = spawn(move || {
        let end = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * KIB];
        loop {
            let k = read_some(&f, &mut buf, end);
            if k == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..k]);
            count.store(out.len(), Ordering::SeqCst);
        }
    });
    (seen, j)
}

fn assert_no_sigterm_timeout(log: &str, timeout: &str) {
    assert!(
        !log.contains(&format!("shutdown_timeout ({timeout}) reached")),
        "the drain ran into its timeout\n--- log ---\n{log}"
    );
}

/// What a stop may take when nothing makes it wait for `shutdown_timeout`.
const QUICK_STOP: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn pipeline_drains_stage_by_stage_at_stop() {
    let mut d = Guarded::start(
        r#"
[daemon]
shutdown_timeout = "10s"

[fifo.in]
[fifo.out]

[process.up]
command = ["tr", "a-z", "A-Z"]

[process.down]
command = ["cat"]

[[route]]
from = ["in"]
to = ["up"]

[[route]]
from = ["up"]
to = ["down"]

[[route]]
from = ["down"]
to = ["out"]
"#,
    );
    let r = open_reader(&d.fifo("out"));
    let reader = spawn(move || read_to_eof(&r, STOP_TIMEOUT));
    let w = open_writer(&d.fifo("in"));
    write_all(&w, b"hello world\n", Instant::now() + TIMEOUT);
    drop(w);

    let (code, took, log) = timed_stop(&mut d);
    let got = reader.join(STOP_TIMEOUT);
    assert_eq!(
        String::from_utf8_lossy(&got),
        "HELLO WORLD\n",
        "what the reader of `out` got before EOF\n--- log ---\n{log}"
    );
    assert_eq!(code, Some(0), "exit status\n--- log ---\n{log}");
    assert!(
        took < QUICK_STOP,
        "the stop took {took:?} (shutdown_timeout 10s): the drain did not complete\n--- log ---\n{log}"
    );
    assert_no_sigterm_timeout(&log, "10s");
    for (route, sink) in [(0, "up"), (1, "down"), (2, "out")] {
        assert_stats(&d, route, sink, (12, 12, 0, 0));
    }
}

#[test]
fn process_down_for_a_restart_does_not_hold_up_the_stop() {
    let mut d = Guarded::start(
        r#"
[daemon]
shutdown_timeout = "10s"

[fifo.f]
[fifo.in]
[fifo.out]

[process.flaky]
command = ["sh", "-c", "read x; exit 1"]
restart_delay = "30s"

[process.gz]
command = ["gzip", "-c"]

[[route]]
from = ["f"]
to = ["flaky"]

[[route]]
from = ["in"]
to = ["gz"]

[[route]]
from = ["gz"]
to = ["out"]
"#,
    );
    let r = open_reader(&d.fifo("out"));
    let reader = spawn(move || read_to_eof(&r, STOP_TIMEOUT));

    let flaky = started_pids(&d.log(), "flaky");
    assert_eq!(flaky.len(), 1, "{}", d.log());
    let wf = open_writer(&d.fifo("f"));
    write_all(&wf, b"x\n", Instant::now() + TIMEOUT);
    let log = wait_log(&d, "flaky to exit", TIMEOUT, |log| {
        !exits(log, "flaky").is_empty()
    });
    assert_eq!(
        exits(&log, "flaky"),
        vec![(
            flaky[0],
            "exited with status 1; restarting in 30s".to_string()
        )],
        "{log}"
    );
    // While flaky is down, bytes for it are held: they must not make the
    // drain wait for a restart that will not come.
    write_all(&wf, b"y\n", Instant::now() + TIMEOUT);
    assert!(
        wait_until(TIMEOUT, || pipe_pending(&wf) == 0),
        "fifod never read `f`\n--- log ---\n{}",
        d.log()
    );

    let seq: String = (1..=1000).map(|i| format!("{i}\n")).collect();
    let w = open_writer(&d.fifo("in"));
    write_all(&w, seq.as_bytes(), Instant::now() + TIMEOUT);
    drop(w);

    let (code, took, log) = timed_stop(&mut d);
    drop(wf);
    let z = reader.join(STOP_TIMEOUT);
    assert_eq!(code, Some(0), "exit status\n--- log ---\n{log}");
    assert!(
        took < QUICK_STOP,
        "the stop took {took:?} (shutdown_timeout 10s): held up by the process that was down\n--- log ---\n{log}"
    );
    assert_no_sigterm_timeout(&log, "10s");
    assert!(
        z.len() >= 2 && z[..2] == [0x1f, 0x8b],
        "`out` got no gzip stream ({} bytes)\n--- log ---\n{log}",
        z.len()
    );
    let out_len = z.len() as u64;
    let plain = gunzip(z);
    assert_eq!(
        String::from_utf8_lossy(&plain),
        seq,
        "decompressed output\n--- log ---\n{log}"
    );

    let gz = started_pids(&log, "gz");
    assert_eq!(gz.len(), 1, "gz started more than once\n{log}");
    assert_eq!(
        exits(&log, "gz"),
        vec![(gz[0], "exited with status 0".to_string())],
        "gz must end by itself, with status 0, not be killed\n--- log ---\n{log}"
    );
    let f = d.stats(0, "flaky");
    assert_eq!(
        (f.accepted, f.delivered),
        (4, 2),
        "flaky took `x\\n` and was down for `y\\n`: {f:?}\n--- log ---\n{log}"
    );
    assert_stats(&d, 1, "gz", (seq.len() as u64, seq.len() as u64, 0, 0));
    assert_stats(&d, 2, "out", (out_len, out_len, 0, 0));
}

#[test]
fn pure_producer_does_not_make_the_stop_wait_for_the_timeout() {
    let mut d = Guarded::start(
        r#"
[daemon]
shutdown_timeout = "20s"

[fifo.out]

[process.tick]
command = ["sh", "-c", "while :; do echo t; sleep 0.05; done"]

[[route]]
from = ["tick"]
to = ["out"]
"#,
    );
    let tick = started_pids(&d.log(), "tick");
    assert_eq!(tick.len(), 1, "{}", d.log());
    let (seen, reader) = counting_reader(open_reader(&d.fifo("out")), STOP_TIMEOUT);
    assert!(
        wait_until(TIMEOUT, || seen.load(Ordering::SeqCst) >= 4),
        "tick's output never reached `out`\n--- log ---\n{}",
        d.log()
    );

    let (code, took, log) = timed_stop(&mut d);
    let got = reader.join(STOP_TIMEOUT);
    assert_eq!(code, Some(0), "exit status\n--- log ---\n{log}");
    assert!(
        took < QUICK_STOP,
        "the stop took {took:?} (shutdown_timeout 20s)\n--- log ---\n{log}"
    );
    assert_no_sigterm_timeout(&log, "20s");
    assert!(
        messages(&log)
            .iter()
            .any(|m| m.starts_with("sending SIGTERM to process tick")),
        "tick was not sent SIGTERM\n--- log ---\n{log}"
    );
    assert!(
        got.len() >= 4 && got.len() % 2 == 0 && got.chunks(2).all(|c| c == b"t\n"),
        "`out` got {:?}\n--- log ---\n{log}",
        String::from_utf8_lossy(&got)
    );
    let len = got.len() as u64;
    assert_stats(&d, 0, "out", (len, len, 0, 0));
    assert!(
        proc_stat(tick[0]).is_none_or(|(s, _, _)| s == 'Z' || s == 'X'),
        "tick (pid {}) still runs after the stop",
        tick[0]
    );
}

/// Kills any `sleep 777` left in group `pgid` when dropped.
#[derive(Debug)]
struct SleepReaper(i32);

impl Drop for SleepReaper {
    fn drop(&mut self) {
        for pid in sleeps_in_group(self.0) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

#[test]
fn what_a_process_leaves_in_its_group_is_killed_when_it_exits() {
    let mut d = Guarded::start(
        r#"
[daemon]
shutdown_timeout = "20s"

[fifo.out]

[process.bg]
command = ["sh", "-c", "sleep 777 & echo hi"]
restart = "never"

[[route]]
from = ["bg"]
to = ["out"]
"#,
    );
    let bg = started_pids(&d.log(), "bg");
    assert_eq!(bg.len(), 1, "{}", d.log());
    let bg = bg[0];
    let _reaper = SleepReaper(bg);
    let r = open_reader(&d.fifo("out"));
    let log = wait_log(&d, "bg to exit", TIMEOUT, |log| {
        !exits(log, "bg").is_empty()
    });
    assert_eq!(
        exits(&log, "bg"),
        vec![(
            bg,
            "exited with status 0; it will not be restarted".to_string()
        )],
        "{log}"
    );
    assert_eq!(read_exact(&r, 3, TIMEOUT), b"hi\n", "{}", d.log());

    let mut left = Vec::new();
    assert!(
        wait_until(TIMEOUT, || {
            left = sleeps_in_group(bg);
            left.is_empty()
        }),
        "`sleep 777` (pids {left:?}, group {bg}) outlived bg by {TIMEOUT:?}\n--- log ---\n{}",
        d.log()
    );

    let (code, took, log) = timed_stop(&mut d);
    assert_eq!(code, Some(0), "exit status\n--- log ---\n{log}");
    assert!(
        took < QUICK_STOP,
        "the stop took {took:?} (shutdown_timeout 20s)\n--- log ---\n{log}"
    );
    assert_no_sigterm_timeout(&log, "20s");
    assert_no_more(&r, "out");
    assert_stats(&d, 0, "out", (3, 3, 0, 0));
    assert_eq!(
        sleeps_in_group(bg),
        Vec::<i32>::new(),
        "`sleep 777` still runs after the stop"
    );
}

/// `n` lines of 100 bytes: 99 digits of the line number, then a newline.
fn numbered_lines(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("{i:099}\n").into_bytes())
        .collect()
}

#[test]
fn line_route_with_a_small_buffer_keeps_flowing() {
    let mut d = Guarded::start(
        r#"
[daemon]
shutdown_timeout = "10s"
pipe_size = "64KiB"

[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
framing = "lines"
buffer = "4KiB"
"#,
    );
    const LEN: usize = 100_000;
    let data = numbered_lines(LEN / 100);
    assert_eq!(data.len(), LEN);
    let r = open_reader(&d.fifo("out"));
    let w = open_writer(&d.fifo("in"));
    let to_write = data.clone();
    let writer = spawn(move || {
        write_all(&w, &to_write, Instant::now() + 3 * TIMEOUT);
        w
    });
    // The reader starts once the route is backed up: `out`'s pipe and the
    // 4 KiB buffer full, the source paused with a line in progress, and
    // the rest in `in`'s pipe (64 + 4 + 64 KiB hold the 100 000 bytes).
    let w = writer.join(3 * TIMEOUT);
    d.wait_idle(&[]);
    assert!(
        pipe_pending(&r) >= 48 * KIB && pipe_pending(&w) > 0,
        "premise: the route is backed up (out holds {}, in holds {})",
        pipe_pending(&r),
        pipe_pending(&w)
    );
    let mut got = Vec::with_capacity(LEN);
    let end = Instant::now() + 3 * TIMEOUT;
    let mut buf = vec![0u8; 64 * KIB];
    while got.len() < LEN {
        let want = buf.len().min(LEN - got.len());
        match (&r).read(&mut buf[..want]) {
            Ok(0) => panic!(
                "EOF after {} of {LEN} bytes\n--- log ---\n{}",
                got.len(),
                d.log()
            ),
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < end,
                    "`out` stalled after {} of {LEN} bytes\n--- log ---\n{}",
                    got.len(),
                    d.log()
                );
                poll_one(&r, PollFlags::POLLIN, Duration::from_millis(100));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    drop(w);
    if got != data {
        let at = got.iter().zip(&data).position(|(a, b)| a != b).unwrap_or(0);
        let line = at / 100;
        panic!(
            "`out` differs from what was written at byte {at} (line {line}): got {:?}",
            String::from_utf8_lossy(&got[line * 100..(line * 100 + 100).min(got.len())])
        );
    }
    d.stop_ok();
    assert_no_more(&r, "out");
    assert_stats(&d, 0, "out", (LEN as u64, LEN as u64, 0, 0));
}

#[test]
fn unfinished_line_at_stop_is_counted() {
    let mut d = Guarded::start(
        r#"
[daemon]
shutdown_timeout = "300ms"

[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
framing = "lines"
"#,
    );
    let w = open_writer(&d.fifo("in"));
    write_all(&w, b"complete\npartial", Instant::now() + TIMEOUT);
    assert!(
        wait_until(TIMEOUT, || pipe_pending(&w) == 0),
        "fifod never read `in`\n--- log ---\n{}",
        d.log()
    );
    let (code, _, log) = timed_stop(&mut d);
    drop(w);
    assert_eq!(code, Some(0), "exit status\n--- log ---\n{log}");
    // parse_stats checks accepted = delivered + dropped + undelivered.
    let s = d.stats(0, "out");
    assert_eq!(
        s.accepted, 16,
        "all 16 bytes, the 7 of the unfinished line too, must be accounted: {s:?}\n--- log ---\n{log}"
    );
}

#[test]
fn unfinished_line_is_counted_when_the_drain_cannot_take_every_input() {
    // A second input, backed up behind an output nobody reads, keeps the
    // drain from ever taking all it holds: the unfinished line of `in` is
    // still in progress when the timeout ends the drain.
    let mut d = Guarded::start(
        r#"
[daemon]
shutdown_timeout = "300ms"
pipe_size = "64KiB"

[fifo.in]
[fifo.out]
[fifo.in2]
[fifo.out2]

[[route]]
from = ["in"]
to = ["out"]
framing = "lines"

[[route]]
from = ["in2"]
to = ["out2"]
buffer = "4KiB"
"#,
    );
    let w2 = open_writer(&d.fifo("in2"));
    let written = write_until_stalled(&w2, 7, 4 * MIB as u64, Duration::from_millis(200));
    let w = open_writer(&d.fifo("in"));
    write_all(&w, b"complete\npartial", Instant::now() + TIMEOUT);
    assert!(
        wait_until(TIMEOUT, || pipe_pending(&w) == 0),
        "fifod never read `in`\n--- log ---\n{}",
        d.log()
    );
    d.wait_idle(&[&w]);
    assert!(
        pipe_pending(&w2) > 0,
        "premise: `in2` is backed up ({written} bytes written)"
    );
    let (code, _, log) = timed_stop(&mut d);
    drop((w, w2));
    assert_eq!(code, Some(0), "exit status\n--- log ---\n{log}");
    let s = d.stats(0, "out");
    assert_eq!(
        s.accepted, 16,
        "all 16 bytes, the 7 of the unfinished line too, must be accounted: {s:?}\n--- log ---\n{log}"
    );
    // parse_stats checked accepted = delivered + dropped + undelivered.
    let _ = d.stats(1, "out2");
}
