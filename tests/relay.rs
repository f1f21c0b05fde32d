//! Relaying bytes: writers and readers coming and going, fan-in, fan-out,
//! bulk transfer, and the three `when_full` policies.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::common::{
    BULK_TIMEOUT, Daemon, KIB, MIB, STOP_TIMEOUT, TIMEOUT, Verifier, assert_no_more,
    assert_stats_in, fill_pattern, open_reader, open_writer, pattern, read_exact, read_some,
    read_to_eof, spawn, wait_until, write_all, write_pattern, write_until_stalled,
};

const SIMPLE: &str = r#"
[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
buffer = "1MiB"
"#;

/// Stops the daemon (SIGTERM, exit 0) and returns the log.
fn stop_ok(d: &mut Daemon) -> String {
    d.stop_ok();
    d.log()
}

const RECORD: usize = 4096;
const WRITERS: u32 = 8;
const RECORDS: u32 = 64;

fn record(id: u32, seq: u32) -> Vec<u8> {
    let mut rec = vec![0u8; RECORD];
    rec[0..4].copy_from_slice(&id.to_le_bytes());
    rec[4..8].copy_from_slice(&seq.to_le_bytes());
    fill_pattern(
        1000 + u64::from(id),
        u64::from(seq) * RECORD as u64,
        &mut rec[8..],
    );
    rec
}

#[test]
fn sequential_then_concurrent_writers() {
    let mut d = Daemon::start(SIMPLE);
    let input = d.fifo("in");
    let r = open_reader(&d.fifo("out"));

    // Writers one after another, each opening and closing the FIFO.
    let piece = 10 * KIB;
    for i in 0..5u64 {
        let w = open_writer(&input);
        write_all(
            &w,
            &pattern(7, i * piece as u64, piece),
            Instant::now() + TIMEOUT,
        );
    }
    let got = read_exact(&r, 5 * piece, TIMEOUT);
    Verifier::new(7, 0).check(&got).unwrap();

    // Eight concurrent writers of tagged 4096-byte records.
    let total = (WRITERS * RECORDS) as usize * RECORD;
    let reader = spawn(move || {
        let end = Instant::now() + BULK_TIMEOUT;
        let mut next = vec![0u32; WRITERS as usize];
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 64 * KIB];
        let mut seen = 0usize;
        while seen < total {
            let k = read_some(&r, &mut buf, end);
            assert!(k > 0, "EOF after {seen} of {total} bytes");
            pending.extend_from_slice(&buf[..k]);
            seen += k;
            let whole = pending.len() / RECORD * RECORD;
            for rec in pending[..whole].chunks(RECORD) {
                let id = u32::from_le_bytes(rec[0..4].try_into().unwrap());
                let seq = u32::from_le_bytes(rec[4..8].try_into().unwrap());
                assert!(
                    id < WRITERS,
                    "bad writer id {id}: record torn or misaligned"
                );
                assert_eq!(seq, next[id as usize], "writer {id}: record out of order");
                assert!(
                    rec == record(id, seq),
                    "writer {id} record {seq}: payload corrupt"
                );
                next[id as usize] += 1;
            }
            pending.drain(..whole);
        }
        assert_eq!(seen, total, "more bytes than written");
        assert!(
            next.iter().all(|&n| n == RECORDS),
            "records per writer: {next:?}"
        );
        r
    });
    let writers: Vec<_> = (0..WRITERS)
        .map(|id| {
            let input = input.clone();
            spawn(move || {
                let w = open_writer(&input);
                let end = Instant::now() + BULK_TIMEOUT;
                for seq in 0..RECORDS {
                    write_all(&w, &record(id, seq), end);
                }
            })
        })
        .collect();
    for w in writers {
        w.join(BULK_TIMEOUT);
    }
    let r = reader.join(BULK_TIMEOUT);
    let log = stop_ok(&mut d);
    assert_no_more(&r, "out");
    let all = (5 * piece + total) as u64;
    assert_stats_in(&log, 0, "out", (all, all, 0, 0));
}

#[test]
fn reader_absent_then_present() {
    let mut d = Daemon::start(SIMPLE);
    let n = 100 * KIB;
    {
        let w = open_writer(&d.fifo("in"));
        write_pattern(&w, 21, 0, n, Instant::now() + TIMEOUT);
    }
    let r = open_reader(&d.fifo("out"));
    let got = read_exact(&r, n, TIMEOUT);
    Verifier::new(21, 0).check(&got).unwrap();
    let log = stop_ok(&mut d);
    assert_no_more(&r, "out");
    let n = n as u64;
    assert_stats_in(&log, 0, "out", (n, n, 0, 0));
}

#[test]
fn reader_leaves_and_new_reader_continues() {
    let mut d = Daemon::start(SIMPLE);
    let w = open_writer(&d.fifo("in"));
    let half = 100 * KIB;
    write_pattern(&w, 31, 0, half, Instant::now() + TIMEOUT);

    let first = 40_000;
    {
        let r1 = open_reader(&d.fifo("out"));
        let got = read_exact(&r1, first, TIMEOUT);
        Verifier::new(31, 0).check(&got).unwrap();
    }
    // Written while nobody reads.
    write_pattern(&w, 31, half as u64, half, Instant::now() + TIMEOUT);

    let r2 = open_reader(&d.fifo("out"));
    let got = read_exact(&r2, 2 * half - first, TIMEOUT);
    Verifier::new(31, first as u64).check(&got).unwrap();
    drop(w);
    let log = stop_ok(&mut d);
    assert_no_more(&r2, "out");
    let n = 2 * half as u64;
    assert_stats_in(&log, 0, "out", (n, n, 0, 0));
}

/// Writes `len` bytes of stream `seed`, each byte passed through `map`.
fn write_mapped(f: &File, seed: u64, len: usize, map: fn(u8) -> u8, end: Instant) {
    let mut buf = vec![0u8; 16 * KIB];
    let mut done = 0;
    while done < len {
        let n = buf.len().min(len - done);
        fill_pattern(seed, done as u64, &mut buf[..n]);
        for b in &mut buf[..n] {
            *b = map(*b);
        }
        write_all(f, &buf[..n], end);
        done += n;
    }
}

#[test]
fn fan_in_merges_two_inputs() {
    let mut d = Daemon::start(
        r#"
[fifo.in1]
[fifo.in2]
[fifo.out]

[[route]]
from = ["in1", "in2"]
to = ["out"]
"#,
    );
    let n = 300 * KIB;
    let r = open_reader(&d.fifo("out"));
    // Stream 1 has the high bit clear, stream 2 set: whatever the
    // interleaving, the merged output splits back into both.
    let low: fn(u8) -> u8 = |b| b & 0x7f;
    let high: fn(u8) -> u8 = |b| b | 0x80;
    let writers: Vec<_> = [("in1", 41, low), ("in2", 42, high)]
        .into_iter()
        .map(|(name, seed, map)| {
            let path = d.fifo(name);
            spawn(move || {
                let w = open_writer(&path);
                write_mapped(&w, seed, n, map, Instant::now() + BULK_TIMEOUT);
            })
        })
        .collect();
    let reader = spawn(move || {
        let got = read_exact(&r, 2 * n, BULK_TIMEOUT);
        (r, got)
    });
    for w in writers {
        w.join(BULK_TIMEOUT);
    }
    let (r, got) = reader.join(BULK_TIMEOUT);
    let (s1, s2): (Vec<u8>, Vec<u8>) = got.iter().partition(|&&b| b & 0x80 == 0);
    let e1: Vec<u8> = pattern(41, 0, n).into_iter().map(low).collect();
    let e2: Vec<u8> = pattern(42, 0, n).into_iter().map(high).collect();
    assert_eq!(s1.len(), n, "bytes from in1");
    assert_eq!(s2.len(), n, "bytes from in2");
    assert!(s1 == e1, "stream from in1 corrupted or reordered");
    assert!(s2 == e2, "stream from in2 corrupted or reordered");
    let log = stop_ok(&mut d);
    assert_no_more(&r, "out");
    let all = 2 * n as u64;
    assert_stats_in(&log, 0, "out", (all, all, 0, 0));
}

const FAN_OUT: &str = r#"
[fifo.in]
[fifo.out1]
[fifo.out2]

[[route]]
from = ["in"]
to = ["out1", "out2"]
buffer = "1MiB"
"#;

#[test]
fn fan_out_to_two_outputs() {
    let mut d = Daemon::start(FAN_OUT);
    let n = 300 * KIB;
    let readers: Vec<_> = ["out1", "out2"]
        .into_iter()
        .map(|name| {
            let r = open_reader(&d.fifo(name));
            spawn(move || {
                let got = read_exact(&r, n, BULK_TIMEOUT);
                (r, got)
            })
        })
        .collect();
    let w = open_writer(&d.fifo("in"));
    write_pattern(&w, 51, 0, n, Instant::now() + BULK_TIMEOUT);
    let mut files = Vec::new();
    for (i, reader) in readers.into_iter().enumerate() {
        let (r, got) = reader.join(BULK_TIMEOUT);
        Verifier::new(51, 0)
            .check(&got)
            .unwrap_or_else(|e| panic!("out{}: {e}", i + 1));
        files.push(r);
    }
    let log = stop_ok(&mut d);
    for (r, sink) in files.iter().zip(["out1", "out2"]) {
        assert_no_more(r, sink);
    }
    for sink in ["out1", "out2"] {
        let n = n as u64;
        assert_stats_in(&log, 0, sink, (n, n, 0, 0));
    }
}

#[test]
fn bulk_256_mib_fan_out_byte_exact() {
    let mut d = Daemon::start(FAN_OUT);
    let total: u64 = 256 * MIB as u64;
    let seed = 61;
    let failed = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    let mut progress = Vec::new();
    for name in ["out1", "out2"] {
        let r = open_reader(&d.fifo(name));
        let count = Arc::new(AtomicU64::new(0));
        progress.push(Arc::clone(&count));
        let failed = Arc::clone(&failed);
        readers.push(spawn(move || -> Result<(File, u64), String> {
            let end = Instant::now() + BULK_TIMEOUT;
            let mut v = Verifier::new(seed, 0);
            let mut buf = vec![0u8; 256 * KIB];
            while v.offset < total {
                let k = read_some(&r, &mut buf, end);
                let res = if k == 0 {
                    Err(format!("EOF after {} bytes", v.offset))
                } else {
                    v.check(&buf[..k])
                };
                if let Err(e) = res {
                    failed.store(true, Ordering::SeqCst);
                    return Err(e);
                }
                count.store(v.offset, Ordering::Relaxed);
            }
            Ok((r, v.offset))
        }));
    }
    let path = d.fifo("in");
    let writer = spawn(move || {
        let w = open_writer(&path);
        write_pattern(&w, seed, 0, total as usize, Instant::now() + BULK_TIMEOUT);
    });
    let done = wait_until(BULK_TIMEOUT, || {
        failed.load(Ordering::SeqCst) || progress.iter().all(|c| c.load(Ordering::Relaxed) >= total)
    });
    let counts: Vec<u64> = progress.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    assert!(
        done,
        "readers got {counts:?} of {total} bytes in {BULK_TIMEOUT:?}"
    );
    let mut files = Vec::new();
    for (i, reader) in readers.into_iter().enumerate() {
        match reader.join(TIMEOUT) {
            Ok((f, n)) => {
                assert_eq!(n, total, "out{}", i + 1);
                files.push(f);
            }
            Err(e) => panic!("out{}: {e}", i + 1),
        }
    }
    writer.join(TIMEOUT);
    let log = stop_ok(&mut d);
    for (r, sink) in files.iter().zip(["out1", "out2"]) {
        assert_no_more(r, sink);
    }
    for sink in ["out1", "out2"] {
        assert_stats_in(&log, 0, sink, (total, total, 0, 0));
    }
}

#[test]
fn block_backpressure_loses_nothing() {
    let mut d = Daemon::start(
        r#"
[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
buffer = "4KiB"
when_full = "block"
"#,
    );
    let seed = 71;
    let w = open_writer(&d.fifo("in"));
    // Write without a reader until the writer stalls (EAGAIN and no room
    // for 500 ms): fifod stopped reading the input.
    let written = write_until_stalled(&w, seed, 16 * MIB as u64, Duration::from_millis(500));
    assert!(written > 0);
    eprintln!("writer stalled after {written} bytes");

    let r = open_reader(&d.fifo("out"));
    let got = read_exact(&r, written as usize, TIMEOUT);
    Verifier::new(seed, 0).check(&got).unwrap();
    // Flowing again once drained.
    let more = 64 * KIB;
    let writer = spawn(move || {
        write_pattern(&w, seed, written, more, Instant::now() + TIMEOUT);
        w
    });
    let got = read_exact(&r, more, TIMEOUT);
    Verifier::new(seed, written).check(&got).unwrap();
    drop(writer.join(TIMEOUT));
    let log = stop_ok(&mut d);
    assert_no_more(&r, "out");
    let all = written + more as u64;
    assert_stats_in(&log, 0, "out", (all, all, 0, 0));
}

/// Writes 1 MiB with no reader into a 64KiB `policy` route, waits until
/// fifod has taken it all, then reads until EOF across a SIGTERM.
/// Returns (what was read, stats, log).
fn overflow(policy: &str, seed: u64) -> (Vec<u8>, crate::common::Stats, String) {
    let mut d = Daemon::start(&format!(
        r#"
[daemon]
shutdown_timeout = "30s"
# 1 MiB is more than a 64 KiB pipe and the buffer hold
pipe_size = "64KiB"

[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
buffer = "64KiB"
when_full = "{policy}"
"#
    ));
    let n = MIB;
    let w = open_writer(&d.fifo("in"));
    write_pattern(&w, seed, 0, n, Instant::now() + TIMEOUT);
    d.wait_idle(&[&w]);
    let r = open_reader(&d.fifo("out"));
    d.signal(Signal::SIGTERM);
    let got = read_to_eof(&r, STOP_TIMEOUT);
    let st = d.wait_exit(STOP_TIMEOUT);
    assert_eq!(st.code(), Some(0), "{st:?}\n{}", d.log());
    let log = d.log();
    let s = crate::common::parse_stats(&log, 0, "out");
    assert_eq!(s.accepted, n as u64, "accepted != bytes written\n{log}");
    assert!(s.dropped > 0, "nothing dropped\n{log}");
    assert_eq!(
        s.delivered,
        got.len() as u64,
        "delivered != bytes read\n{log}"
    );
    assert_eq!(s.undelivered, 0, "reader was present until EOF\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("dropped") && !l.contains("stats route[")),
        "drops not logged:\n{log}"
    );
    (got, s, log)
}

#[test]
fn drop_newest_keeps_a_prefix() {
    let seed = 81;
    let (got, s, _log) = overflow("drop-newest", seed);
    assert!(!got.is_empty());
    Verifier::new(seed, 0)
        .check(&got)
        .unwrap_or_else(|e| panic!("not a prefix of what was written: {e}"));
    assert_eq!(got.len() as u64 + s.dropped, MIB as u64);
}

#[test]
fn drop_oldest_keeps_the_newest() {
    let seed = 91;
    let (got, s, _log) = overflow("drop-oldest", seed);
    let n = MIB;
    let written = pattern(seed, 0, n);
    let tail = 4 * KIB;
    assert!(got.len() >= tail, "only {} bytes read", got.len());
    assert!(
        got[got.len() - tail..] == written[n - tail..],
        "the last bytes read are not the last bytes written"
    );
    // What was read is the start that reached the pipe before it filled,
    // followed by the newest bytes: stream[..p] ++ stream[n-(len-p)..].
    let lcp = got.iter().zip(&written).take_while(|(a, b)| a == b).count();
    let split = (lcp.saturating_sub(64)..=lcp)
        .rev()
        .find(|&p| got[p..] == written[n - (got.len() - p)..]);
    assert!(
        split.is_some(),
        "read {} bytes that are not a prefix followed by the newest bytes (common prefix {lcp})",
        got.len()
    );
    assert_eq!(got.len() as u64 + s.dropped, n as u64);
}
