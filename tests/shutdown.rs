//! Stopping: the drain, its timeout, and a second signal cutting it short.

use std::fs;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::common::{
    BULK_TIMEOUT, Daemon, IN_OUT, KIB, MIB, STOP_TIMEOUT, TIMEOUT, assert_clean_stats, lstat,
    open_reader, open_writer, parse_stats, pipe_pending, read_some, read_verify_to_eof, spawn,
    wait_log, wait_until, write_pattern, write_until_stalled,
};

/// Is `sig` pending for the process or any of its threads?
fn signal_pending(pid: u32, sig: Signal) -> bool {
    let bit = 1u64 << (sig as i32 - 1);
    let mut files = vec![format!("/proc/{pid}/status")];
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            files.push(t.path().join("status").display().to_string());
        }
    }
    files.iter().any(|f| {
        fs::read_to_string(f).is_ok_and(|text| {
            text.lines().any(|l| {
                let Some(hex) = l
                    .strip_prefix("ShdPnd:")
                    .or_else(|| l.strip_prefix("SigPnd:"))
                else {
                    return false;
                };
                u64::from_str_radix(hex.trim(), 16).is_ok_and(|m| m & bit != 0)
            })
        })
    })
}

fn config(timeout: &str) -> String {
    format!(
        r#"
[daemon]
shutdown_timeout = "{timeout}"
# 200 KiB is more than a 64 KiB pipe holds: fifod holds the rest
pipe_size = "64KiB"

[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
buffer = "1MiB"
"#
    )
}

fn assert_all_removed(d: &Daemon) {
    for name in ["in", "out"] {
        assert!(
            lstat(&d.fifo(name)).is_none(),
            "{name} not removed\n{}",
            d.log()
        );
    }
    assert!(
        lstat(&d.sb.run_dir()).is_none(),
        "dir not removed\n{}",
        d.log()
    );
}

/// A non-stats log line mentioning `undelivered` and the number of bytes.
fn assert_undelivered_logged(log: &str, bytes: u64) {
    let n = bytes.to_string();
    assert!(
        log.lines()
            .any(|l| l.contains("undelivered") && !l.contains("stats route[") && l.contains(&n)),
        "no line reporting {n} undelivered bytes:\n{log}"
    );
}

#[test]
fn bytes_written_before_sigterm_reach_the_reader() {
    let mut d = Daemon::start(&config("30s"));
    let seed = 101;
    let n = 300 * KIB;
    let r = open_reader(&d.fifo("out"));
    let reader = spawn(move || read_verify_to_eof(&r, seed, 0, STOP_TIMEOUT));
    let w = open_writer(&d.fifo("in"));
    write_pattern(&w, seed, 0, n, Instant::now() + TIMEOUT);
    // The writer stays open: fifod must not wait for it.
    let st = d.stop(Signal::SIGTERM);
    assert_eq!(st.code(), Some(0), "{st:?}\n{}", d.log());
    let got = reader.join(STOP_TIMEOUT).unwrap();
    assert_eq!(got, n as u64, "bytes before EOF");
    let n = n as u64;
    assert_clean_stats(&d, 0, "out", n);
    assert_all_removed(&d);
    drop(w);
}

/// Bytes still queued in an input pipe when SIGTERM arrives (fifod had
/// stopped reading: `block`, 4KiB buffer, no reader) are delivered by the
/// drain to a reader that comes after the signal.
#[test]
fn bytes_queued_in_an_input_at_sigterm_are_delivered() {
    let mut d = Daemon::start(
        r#"
[daemon]
shutdown_timeout = "30s"

[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
buffer = "4KiB"
when_full = "block"
"#,
    );
    let seed = 131;
    // A reader that has the output open, but reads only after SIGTERM.
    let r = open_reader(&d.fifo("out"));
    let w = open_writer(&d.fifo("in"));
    let written = write_until_stalled(&w, seed, 16 * MIB as u64, Duration::from_millis(500));
    let queued = pipe_pending(&w);
    assert!(queued > 0, "nothing left queued in the input pipe");
    let pid = d.pid();
    d.signal(Signal::SIGTERM);
    assert!(
        wait_until(TIMEOUT, || !signal_pending(pid, Signal::SIGTERM)),
        "SIGTERM stays pending"
    );
    d.wait_idle(&[]);
    assert!(
        d.try_exited().is_none(),
        "exited with data held:\n{}",
        d.log()
    );
    let got = read_verify_to_eof(&r, seed, 0, STOP_TIMEOUT).unwrap();
    assert_eq!(
        got, written,
        "{queued} bytes were queued in the input at SIGTERM"
    );
    let st = d.wait_exit(STOP_TIMEOUT);
    assert_eq!(st.code(), Some(0), "{st:?}\n{}", d.log());
    assert_clean_stats(&d, 0, "out", written);
    assert_all_removed(&d);
    drop(w);
}

/// A reader that has the output open but does not read: the drain waits
/// for it up to `shutdown_timeout`, not longer.
#[test]
fn a_stalled_reader_drain_gives_up_after_shutdown_timeout() {
    let mut d = Daemon::start(&config("500ms"));
    let n = 200 * KIB;
    let _stalled = open_reader(&d.fifo("out"));
    let w = open_writer(&d.fifo("in"));
    write_pattern(&w, 111, 0, n, Instant::now() + TIMEOUT);
    d.wait_idle(&[&w]);
    let (st, took) = d.timed_stop(TIMEOUT);
    assert_eq!(st.code(), Some(0), "{st:?}\n{}", d.log());
    assert!(
        took >= Duration::from_millis(450),
        "exited after {took:?}: did not wait for the 500ms drain"
    );
    let log = d.log();
    let s = parse_stats(&log, 0, "out");
    assert_eq!(s.accepted, n as u64, "{log}");
    assert_eq!(s.dropped, 0, "{log}");
    assert!(s.undelivered > 0, "{log}");
    assert_undelivered_logged(&log, s.undelivered);
    assert_all_removed(&d);
    drop(w);
}

#[test]
fn second_sigterm_cuts_a_long_drain_short() {
    let mut d = Daemon::start(&config("60s"));
    let n = 200 * KIB;
    let _stalled = open_reader(&d.fifo("out"));
    let w = open_writer(&d.fifo("in"));
    write_pattern(&w, 121, 0, n, Instant::now() + TIMEOUT);
    d.wait_idle(&[&w]);
    let pid = d.pid();
    let t0 = Instant::now();
    d.signal(Signal::SIGTERM);
    // Once the first signal has been taken, send the second; signals of one
    // kind can merge while pending, so repeat (every 2 s) until it exits.
    let mut sent = 1;
    let st = loop {
        let delivered = wait_until(TIMEOUT, || !signal_pending(pid, Signal::SIGTERM));
        assert!(delivered, "SIGTERM stays pending");
        if sent == 1 {
            assert!(
                d.try_exited().is_none(),
                "exited before the drain with data held:\n{}",
                d.log()
            );
        }
        d.signal(Signal::SIGTERM);
        sent += 1;
        if wait_until(Duration::from_secs(2), || d.try_exited().is_some()) {
            break d.wait_exit(TIMEOUT);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "still draining {:?} after {sent} SIGTERMs\n{}",
            t0.elapsed(),
            d.log()
        );
    };
    assert_eq!(st.code(), Some(0), "{st:?}\n{}", d.log());
    assert!(
        t0.elapsed() < Duration::from_secs(12),
        "took {:?}",
        t0.elapsed()
    );
    let log = d.log();
    let s = parse_stats(&log, 0, "out");
    assert_eq!(s.accepted, n as u64, "{log}");
    assert!(s.undelivered > 0, "{log}");
    assert_all_removed(&d);
    assert!(lstat(&d.sb.run_dir().join(".fifod.lock")).is_none());
    drop(w);
}

/// A writer still writing when SIGTERM arrives: every byte its `write`
/// returned is either delivered or counted in the final report, exactly
/// (fifod fills the input's pipe before it counts what is left, so that
/// nothing slips in after the count).
#[test]
fn what_a_writer_still_writing_at_stop_wrote_is_delivered_or_reported() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    // The window it closes is narrow: a few rounds to see it.
    for round in 0..8 {
        let mut d = Daemon::start(IN_OUT);
        let w = fs::OpenOptions::new()
            .write(true)
            .open(d.fifo("in"))
            .unwrap();
        let writer = spawn(move || {
            let block = [b'x'; 4096];
            let mut written = 0u64;
            // Until fifod is gone, and the pipe with it (EPIPE).
            while let Ok(n) = std::io::Write::write(&mut &w, &block) {
                written += n as u64;
            }
            Ok::<u64, String>(written)
        });
        let r = open_reader(&d.fifo("out"));
        let progress = Arc::new(AtomicU64::new(0));
        let reader = {
            let progress = Arc::clone(&progress);
            spawn(move || {
                let end = Instant::now() + BULK_TIMEOUT;
                let mut buf = vec![0u8; 64 * KIB];
                loop {
                    let n = read_some(&r, &mut buf, end);
                    if n == 0 {
                        return Ok::<u64, String>(progress.load(Ordering::SeqCst));
                    }
                    progress.fetch_add(n as u64, Ordering::SeqCst);
                }
            })
        };
        // Stop in the middle of the stream.
        assert!(
            wait_until(TIMEOUT, || progress.load(Ordering::SeqCst) > 4 * MIB as u64),
            "nothing flows"
        );
        d.stop_ok();
        let written = writer.join(TIMEOUT).unwrap();
        let got = reader.join(TIMEOUT).unwrap();
        let log = d.log();
        let left: u64 = log
            .lines()
            .filter_map(|l| {
                let rest = &l[l.find("in: ")? + 4..];
                rest.strip_suffix(" bytes left unread")?.parse::<u64>().ok()
            })
            .sum();
        let held: u64 = log
            .lines()
            .filter_map(|l| l.split("undelivered=").nth(1)?.trim().parse::<u64>().ok())
            .sum();
        assert_eq!(
            written,
            got + left + held,
            "round {round}: written {written}, delivered {got}, left unread {left}, held {held}\n{log}"
        );
    }
}

/// A route full up to its output, which nobody reads: with a long
/// `shutdown_timeout`, the stop does not wait for a reader that is not
/// there, and reports what is left.
const NOBODY_READS: &str = r#"
[daemon]
shutdown_timeout = "60s"

[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
buffer = "64KiB"
"#;

#[test]
fn stop_does_not_wait_for_a_reader_that_is_not_there() {
    let mut d = Daemon::start(NOBODY_READS);
    let w = open_writer(&d.fifo("in"));
    write_until_stalled(&w, 7, 64 * MIB as u64, Duration::from_millis(200));
    // The deadline is far below shutdown_timeout: waiting for it fails.
    let (status, _) = d.timed_stop(TIMEOUT);
    assert!(status.success(), "{status:?}\n{}", d.log());
    let log = d.log();
    assert!(
        log.contains("fifo out: nobody reads it: not waiting for a reader"),
        "{log}"
    );
    assert!(!log.contains("shutdown_timeout"), "{log}");
    let stats = parse_stats(&log, 0, "out");
    assert_eq!(
        stats.accepted,
        stats.delivered + stats.dropped + stats.undelivered,
        "{log}"
    );
    assert!(stats.undelivered > 0, "the lane held nothing: {log}");
    assert!(log.contains("out: "), "{log}");
}

#[test]
fn stop_ends_when_the_last_reader_leaves_during_the_drain() {
    let mut d = Daemon::start(NOBODY_READS);
    let r = open_reader(&d.fifo("out"));
    let w = open_writer(&d.fifo("in"));
    write_until_stalled(&w, 7, 64 * MIB as u64, Duration::from_millis(200));
    d.signal(Signal::SIGTERM);
    wait_log(&d, "the drain's start", TIMEOUT, |log| {
        log.contains("received SIGTERM: draining")
    });
    // The reader takes a little, then leaves.
    let mut buf = vec![0u8; 4096];
    read_some(&r, &mut buf, Instant::now() + TIMEOUT);
    drop(r);
    let status = d.wait_exit(TIMEOUT);
    assert!(status.success(), "{status:?}\n{}", d.log());
    let log = d.log();
    assert!(
        log.contains("fifo out: its reader left during the drain"),
        "{log}"
    );
    let stats = parse_stats(&log, 0, "out");
    assert_eq!(
        stats.accepted,
        stats.delivered + stats.dropped + stats.undelivered,
        "{log}"
    );
}
