//! Line framing: lines of several writers never interleave however their
//! writes are cut, long lines go on in pieces, a process's unfinished last
//! line is passed on as it is, and the drop policies drop whole lines while
//! the accounting always adds up.

use std::fs::File;
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use crate::common::{
    BULK_TIMEOUT, Counts, Daemon, KIB, MIB, Rng, Stats, TIMEOUT, assert_no_more, checked_counts,
    fifo_entry, num, open_reader, open_writer, pipe_pending, process_entry, read_exact, read_some,
    read_to_eof, route_entry, sink_entry, spawn, status_json, status_of, status_until, text,
    wait_until, write_all,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A generator seeded as the framing tests' lines were first made.
fn xorshift(seed: u64) -> Rng {
    let mut rng = Rng((seed ^ 0x2545_F491_4F6C_DD1D).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    if rng.0 == 0 {
        rng.0 = 1;
    }
    for _ in 0..4 {
        rng.next();
    }
    rng
}

/// `tag`, then `filler` letters derived from `seed`, then a newline.
fn tagged_line(tag: &str, seed: u64, filler: usize) -> Vec<u8> {
    let len = tag.len() + filler;
    let mut line = Vec::with_capacity(len + 1);
    line.extend_from_slice(tag.as_bytes());
    let mut rng = xorshift(seed);
    while line.len() < len {
        let n = (len - line.len()).min(8);
        let word = rng.next().to_le_bytes();
        line.extend(word[..n].iter().map(|b| b'a' + b % 26));
    }
    line.push(b'\n');
    line
}

/// Cuts `data` into writes of random sizes: tiny ones, ones up to a page,
/// and ones larger than a page (up to 256 KiB, more than a pipe holds).
fn write_cut(f: &File, data: &[u8], rng: &mut Rng, end: Instant, mut wrote: impl FnMut(usize)) {
    let mut off = 0;
    while off < data.len() {
        let n = match rng.next() % 10 {
            0..=3 => rng.between(1, 16),
            4..=6 => rng.between(17, 4096),
            _ => rng.between(4097, 256 * KIB),
        }
        .min(data.len() - off);
        write_all(f, &data[off..off + n], end);
        off += n;
        wrote(n);
    }
}

/// Reads what is in the pipe now, at most `max` bytes, into `out`.
fn read_available(f: &File, out: &mut Vec<u8>, max: usize) {
    let mut buf = vec![0u8; 64 * KIB];
    let mut got = 0;
    while got < max {
        let want = buf.len().min(max - got);
        let mut r = f;
        match r.read(&mut buf[..want]) {
            Ok(0) => panic!("unexpected EOF"),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                got += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// The `(id, seq)` of a line tagged `{prefix}{id}:{seq}:` (id absent when
/// the prefix is followed by the sequence number directly).
fn tag_of(line: &[u8], prefix: char) -> Option<(usize, usize)> {
    let head = String::from_utf8_lossy(&line[..line.len().min(40)]).into_owned();
    let rest = head.strip_prefix(prefix)?;
    let mut parts = rest.splitn(3, ':');
    let a: usize = parts.next()?.parse().ok()?;
    let b = parts.next()?;
    match parts.next() {
        Some(_) => Some((a, b.parse().ok()?)),
        None => Some((0, a)),
    }
}

fn show(line: &[u8]) -> String {
    format!(
        "{} bytes: {:?}…",
        line.len(),
        String::from_utf8_lossy(&line[..line.len().min(40)])
    )
}

// ---------------------------------------------------------------------------
// (1) Several writers, lines of any length, writes cut anywhere
// ---------------------------------------------------------------------------

const WRITERS: usize = 4;
const PER_WRITER: usize = 6 * MIB;

const MERGE: &str = r#"
[fifo.in0]
[fifo.in1]
[fifo.in2]
[fifo.in3]
[fifo.out]

[[route]]
from = ["in0", "in1", "in2", "in3"]
to = ["out"]
framing = "lines"
max_line = "128KiB"
buffer = "4MiB"
"#;

/// Line `seq` of writer `id`: mostly short lines, some of a few KiB, a
/// tenth up to 100 KiB.
fn merge_line(id: usize, seq: usize) -> Vec<u8> {
    let seed = ((id as u64 + 1) << 32) | seq as u64;
    let mut rng = xorshift(seed ^ 0xABCD);
    let filler = match rng.next() % 10 {
        0..=4 => rng.between(0, 64),
        5..=8 => rng.between(65, 4096),
        _ => rng.between(4097, 100 * KIB - 16),
    };
    tagged_line(&format!("w{id}:{seq}:"), seed, filler)
}

#[test]
fn lines_of_four_writers_never_interleave() {
    let mut d = Daemon::start(MERGE);
    let r = open_reader(&d.fifo("out"));
    let streams: Vec<Arc<Vec<u8>>> = (0..WRITERS)
        .map(|id| {
            let mut s = Vec::with_capacity(PER_WRITER + 100 * KIB);
            let mut seq = 0;
            while s.len() < PER_WRITER {
                s.extend_from_slice(&merge_line(id, seq));
                seq += 1;
            }
            Arc::new(s)
        })
        .collect();
    let lines_of: Vec<usize> = streams
        .iter()
        .map(|s| s.iter().filter(|&&b| b == b'\n').count())
        .collect();
    let total: usize = streams.iter().map(|s| s.len()).sum();
    let total_lines: usize = lines_of.iter().sum();

    let writers: Vec<_> = (0..WRITERS)
        .map(|id| {
            let path = d.fifo(&format!("in{id}"));
            let stream = Arc::clone(&streams[id]);
            spawn(move || {
                let w = open_writer(&path);
                let mut rng = xorshift(1000 + id as u64);
                write_cut(&w, &stream, &mut rng, Instant::now() + BULK_TIMEOUT, |_| {});
            })
        })
        .collect();

    // Read and check every line as it comes: whole, and in its writer's order.
    let end = Instant::now() + BULK_TIMEOUT;
    let mut offsets = [0usize; WRITERS];
    let mut seen = [0usize; WRITERS];
    let mut pending: Vec<u8> = Vec::new();
    let mut scanned = 0;
    let mut received = 0;
    let mut chunk = vec![0u8; 256 * KIB];
    while received < total {
        let k = read_some(&r, &mut chunk, end);
        assert!(k > 0, "EOF after {received} of {total} bytes");
        received += k;
        pending.extend_from_slice(&chunk[..k]);
        let mut start = 0;
        while let Some(i) = memchr::memchr(b'\n', &pending[scanned..]) {
            let line = &pending[start..scanned + i + 1];
            let (id, seq) = tag_of(line, 'w')
                .filter(|&(id, _)| id < WRITERS)
                .unwrap_or_else(|| {
                    panic!(
                        "line {} not from a writer: {}",
                        seen.iter().sum::<usize>(),
                        show(line)
                    )
                });
            let stream = &streams[id][offsets[id]..];
            let want = memchr::memchr(b'\n', stream).map_or(stream, |e| &stream[..=e]);
            assert!(
                line == want,
                "writer {id}: line #{} should be {} (seq {}), got {} (seq {seq})",
                seen[id],
                show(want),
                seen[id],
                show(line)
            );
            offsets[id] += line.len();
            seen[id] += 1;
            start = scanned + i + 1;
            scanned = start;
        }
        // No newline after `start`: what follows is scanned already.
        scanned = pending.len();
        pending.drain(..start);
        scanned -= start;
    }
    assert!(
        pending.is_empty(),
        "a partial line at the end: {}",
        show(&pending)
    );
    for id in 0..WRITERS {
        assert_eq!(offsets[id], streams[id].len(), "writer {id}");
        assert_eq!(seen[id], lines_of[id], "writer {id}");
    }
    for w in writers {
        w.join(TIMEOUT);
    }

    let st = status_json(&d);
    let (bytes, lines) = checked_counts(sink_entry(&st, 0, "out"));
    let total = total as u64;
    let total_lines = total_lines as u64;
    let all = |n| Counts {
        produced: n,
        delivered: n,
        held: 0,
        dropped: 0,
    };
    assert_eq!(bytes, all(total), "{st}");
    assert_eq!(lines, Some(all(total_lines)), "{st}");
    assert_eq!(num(route_entry(&st, 0), "long_lines"), 0, "{st}");
    for (id, stream) in streams.iter().enumerate() {
        let f = fifo_entry(&st, &format!("in{id}"));
        assert_eq!(num(f, "bytes"), stream.len() as u64, "{f}");
        assert_eq!(num(f, "queued"), 0, "{f}");
    }
    assert_eq!(num(fifo_entry(&st, "out"), "bytes"), total);
    assert_eq!(num(fifo_entry(&st, "out"), "queued"), 0);

    d.stop_ok();
    assert_eq!(
        d.stats(0, "out"),
        Stats {
            accepted: total,
            delivered: total,
            dropped: 0,
            undelivered: 0
        }
    );
    assert!(
        read_to_eof(&r, TIMEOUT).is_empty(),
        "bytes after the stream"
    );
}

// ---------------------------------------------------------------------------
// (2) A line longer than max_line
// ---------------------------------------------------------------------------

#[test]
fn a_long_line_goes_on_in_pieces_without_waiting_for_its_end() {
    let mut d = Daemon::start(
        r#"
[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
framing = "lines"
max_line = "1KiB"
"#,
    );
    let r = open_reader(&d.fifo("out"));
    let w = open_writer(&d.fifo("in"));
    let long = tagged_line("long:", 77, 10 * KIB - 5);
    assert_eq!(long.len(), 10 * KIB + 1);
    let mut sent = b"short1\n".to_vec();
    sent.extend_from_slice(&long[..5220]);
    write_all(&w, &sent, Instant::now() + TIMEOUT);

    // Five whole pieces of 1 KiB go on before the line ends; 100 bytes wait.
    let got = read_exact(&r, 7 + 5 * KIB, TIMEOUT);
    assert!(got == sent[..7 + 5 * KIB], "the first pieces differ");
    let st = status_until(&d, "all 5227 bytes produced", |st| {
        num(sink_entry(st, 0, "out"), "produced") == 5227
    });
    let (bytes, lines) = checked_counts(sink_entry(&st, 0, "out"));
    assert_eq!(
        bytes,
        Counts {
            produced: 5227,
            delivered: 5127,
            held: 100,
            dropped: 0
        },
        "{st}"
    );
    assert_eq!(
        lines,
        Some(Counts {
            produced: 1,
            delivered: 1,
            held: 0,
            dropped: 0
        }),
        "{st}"
    );
    assert_eq!(num(route_entry(&st, 0), "long_lines"), 1, "{st}");

    let mut rest = long[5220..].to_vec();
    rest.extend_from_slice(b"short2\n");
    write_all(&w, &rest, Instant::now() + TIMEOUT);
    let got = read_exact(&r, 100 + rest.len(), TIMEOUT);
    assert!(got[..100] == long[5120..5220], "the held 100 bytes differ");
    assert!(got[100..] == rest[..], "the end of the line differs");

    let st = status_until(&d, "everything delivered", |st| {
        num(sink_entry(st, 0, "out"), "delivered") == 10255
    });
    let (bytes, lines) = checked_counts(sink_entry(&st, 0, "out"));
    assert_eq!(
        bytes,
        Counts {
            produced: 10255,
            delivered: 10255,
            held: 0,
            dropped: 0
        },
        "{st}"
    );
    assert_eq!(
        lines,
        Some(Counts {
            produced: 3,
            delivered: 3,
            held: 0,
            dropped: 0
        }),
        "{st}"
    );
    assert_eq!(num(route_entry(&st, 0), "long_lines"), 1, "{st}");

    d.stop_ok();
    assert_eq!(
        d.stats(0, "out"),
        Stats {
            accepted: 10255,
            delivered: 10255,
            dropped: 0,
            undelivered: 0
        }
    );
    assert!(read_to_eof(&r, TIMEOUT).is_empty(), "bytes after the lines");
}

// ---------------------------------------------------------------------------
// (3) A process's unfinished last line
// ---------------------------------------------------------------------------

#[test]
fn a_partial_last_line_of_a_process_is_delivered_as_it_is() {
    let mut d = Daemon::start(
        r#"
[fifo.out]

[process.p]
command = ["sh", "-c", 'printf "a\nb\npartial"']
restart = "never"

[[route]]
from = ["p"]
to = ["out"]
framing = "lines"
"#,
    );
    let r = open_reader(&d.fifo("out"));
    status_until(&d, "process p stopped", |st| {
        text(process_entry(st, "p"), "state") == "stopped"
    });
    // The process is gone: its last piece must come without waiting for
    // anything else (here there is nothing else).
    let mut got = Vec::new();
    wait_until(TIMEOUT, || {
        read_available(&r, &mut got, usize::MAX);
        got.len() >= 11
    });
    assert_eq!(
        String::from_utf8_lossy(&got),
        "a\nb\npartial",
        "what the reader got within {TIMEOUT:?} after the process ended\n\
         status then: {}\n--- log ---\n{}",
        status_of(&d.sb, false).stdout,
        d.log()
    );
    // Everything the reader has was delivered, and nothing is left.
    let st = status_json(&d);
    let (bytes, lines) = checked_counts(sink_entry(&st, 0, "out"));
    assert_eq!(
        bytes,
        Counts {
            produced: 11,
            delivered: 11,
            held: 0,
            dropped: 0
        },
        "{st}"
    );
    assert_eq!(
        lines,
        Some(Counts {
            produced: 2,
            delivered: 2,
            held: 0,
            dropped: 0
        }),
        "{st}"
    );
    assert_eq!(num(fifo_entry(&st, "out"), "queued"), 0, "{st}");
    assert_eq!(pipe_pending(&r), 0);

    d.stop_ok();
    assert!(
        read_to_eof(&r, TIMEOUT).is_empty(),
        "an invented newline (or more) after the partial line"
    );
    assert_eq!(
        d.stats(0, "out"),
        Stats {
            accepted: 11,
            delivered: 11,
            dropped: 0,
            undelivered: 0
        }
    );
}

// ---------------------------------------------------------------------------
// (4) Drop policies on a line route, with a slow reader
// ---------------------------------------------------------------------------

const DROP_LINES: usize = 3000;
/// The writer writes its stream in this many parts, each after one more
/// status snapshot, so that snapshots see the route while it drops.
const SEGMENTS: usize = 40;

/// Sets its flag when dropped.
#[derive(Debug)]
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn drop_line(seq: usize) -> Vec<u8> {
    let mut rng = xorshift(seq as u64 ^ 0xD809);
    let filler = rng.between(0, 2000);
    tagged_line(&format!("L{seq}:"), seq as u64, filler)
}

fn drop_policy_keeps_the_accounting(policy: &str) {
    let mut d = Daemon::start(&format!(
        r#"
[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
framing = "lines"
buffer = "64KiB"
when_full = "{policy}"
"#
    ));
    let r = open_reader(&d.fifo("out"));
    let stream: Vec<u8> = (0..DROP_LINES).flat_map(drop_line).collect();
    let total = stream.len();

    let written = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let snapshots = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (written, done, snapshots) = (
            Arc::clone(&written),
            Arc::clone(&done),
            Arc::clone(&snapshots),
        );
        let path = d.fifo("in");
        let stream = stream.clone();
        spawn(move || {
            // Set even if this thread panics, so that the reader stops.
            let _done = SetOnDrop(done);
            let w = open_writer(&path);
            let mut rng = xorshift(4242);
            let end = Instant::now() + BULK_TIMEOUT;
            let part = stream.len().div_ceil(SEGMENTS);
            for (i, segment) in stream.chunks(part).enumerate() {
                assert!(
                    wait_until(TIMEOUT, || snapshots.load(Ordering::SeqCst) > i),
                    "no status snapshot for segment {i}"
                );
                write_cut(&w, segment, &mut rng, end, |n| {
                    written.fetch_add(n as u64, Ordering::SeqCst);
                });
            }
        })
    };

    // While the writer writes, read at most an eighth of what it wrote, a
    // page at a time, and check the accounting in every snapshot.
    let end = Instant::now() + BULK_TIMEOUT;
    let mut got: Vec<u8> = Vec::new();
    let mut taken = 0;
    loop {
        let finished = done.load(Ordering::SeqCst);
        let st = status_json(&d);
        checked_counts(sink_entry(&st, 0, "out"));
        taken += 1;
        snapshots.store(taken, Ordering::SeqCst);
        let allowed = (written.load(Ordering::SeqCst) as usize / 8).saturating_sub(got.len());
        read_available(&r, &mut got, allowed.min(4096));
        if finished {
            break;
        }
        assert!(
            Instant::now() < end,
            "the writer did not finish\n{}",
            d.log()
        );
    }
    writer.join(TIMEOUT);
    assert!(taken > SEGMENTS, "only {taken} snapshots");

    // Then read the rest, until fifod holds nothing more.
    let last = loop {
        let st = status_json(&d);
        let (bytes, _) = checked_counts(sink_entry(&st, 0, "out"));
        let settled = num(fifo_entry(&st, "in"), "bytes") == total as u64
            && bytes.produced == total as u64
            && bytes.held == 0;
        read_available(&r, &mut got, usize::MAX);
        if settled && pipe_pending(&r) == 0 {
            break st;
        }
        assert!(
            Instant::now() < end,
            "never settled; last: {st}\n{}",
            d.log()
        );
    };

    // Only whole lines the writer wrote, in its order.
    assert_eq!(got.last(), Some(&b'\n'), "the reader got a partial line");
    let mut next = 0;
    let mut read_lines = 0u64;
    let mut seqs = Vec::new();
    for line in got.split_inclusive(|&b| b == b'\n') {
        let (_, seq) = tag_of(line, 'L')
            .filter(|&(_, seq)| seq < DROP_LINES)
            .unwrap_or_else(|| panic!("line #{read_lines} is no line written: {}", show(line)));
        assert!(
            seq >= next,
            "line {seq} after line {}: out of order",
            next - 1
        );
        let want = drop_line(seq);
        assert!(
            line == want,
            "line #{read_lines} (seq {seq}) is not whole: {} instead of {}",
            show(line),
            show(&want)
        );
        next = seq + 1;
        read_lines += 1;
        seqs.push(seq);
    }
    assert_eq!(seqs.first(), Some(&0), "the first line is never dropped");
    if policy == "drop-oldest" {
        assert_eq!(
            seqs.last(),
            Some(&(DROP_LINES - 1)),
            "drop-oldest keeps the newest line"
        );
    }

    let (bytes, lines) = checked_counts(sink_entry(&last, 0, "out"));
    let lines = lines.expect("line counts on a line route");
    let (total, total_lines, got_len) = (total as u64, DROP_LINES as u64, got.len() as u64);
    assert_eq!(
        bytes,
        Counts {
            produced: total,
            delivered: got_len,
            held: 0,
            dropped: total - got_len
        },
        "{last}"
    );
    assert_eq!(
        lines,
        Counts {
            produced: total_lines,
            delivered: read_lines,
            held: 0,
            dropped: total_lines - read_lines
        },
        "{last}"
    );
    assert!(bytes.dropped > 0, "nothing was dropped: {last}");
    assert_eq!(num(route_entry(&last, 0), "long_lines"), 0, "{last}");
    assert_eq!(text(route_entry(&last, 0), "when_full"), policy, "{last}");

    d.stop_ok();
    assert_eq!(
        d.stats(0, "out"),
        Stats {
            accepted: total,
            delivered: got_len,
            dropped: total - got_len,
            undelivered: 0
        }
    );
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.contains("route[0] -> out: dropped") && l.contains(policy)),
        "no drop was logged\n{log}"
    );
    assert!(
        read_to_eof(&r, TIMEOUT).is_empty(),
        "bytes after the stream"
    );
}

#[test]
fn drop_oldest_drops_whole_lines_and_accounts_for_every_byte() {
    drop_policy_keeps_the_accounting("drop-oldest");
}

#[test]
fn drop_newest_drops_whole_lines_and_accounts_for_every_byte() {
    drop_policy_keeps_the_accounting("drop-newest");
}

/// A thousand writers, fifty at a time, each opening the one input, writing
/// one line of exactly `PIPE_BUF` bytes in one write and leaving: every line
/// comes out whole, once.
#[test]
fn a_thousand_writers_of_4_kib_lines_into_one_fifo() {
    const WRITERS: usize = 1000;
    const AT_ONCE: usize = 50;
    const LINE: usize = 4096;
    fn line_of(id: usize) -> Vec<u8> {
        let mut line = format!("w{id:04} ").into_bytes();
        line.resize(LINE - 1, b'a' + (id % 26) as u8);
        line.push(b'\n');
        line
    }
    let mut d = Daemon::start(
        "[fifo.in]\n[fifo.out]\n\n[[route]]\nfrom = [\"in\"]\nto = [\"out\"]\nframing = \"lines\"\n",
    );
    let r = open_reader(&d.fifo("out"));
    let batches: Vec<_> = (0..AT_ONCE)
        .map(|t| {
            let path = d.fifo("in");
            spawn(move || {
                for id in (t..WRITERS).step_by(AT_ONCE) {
                    let w = open_writer(&path);
                    write_all(&w, &line_of(id), Instant::now() + BULK_TIMEOUT);
                }
            })
        })
        .collect();
    let mut seen = vec![false; WRITERS];
    let mut buf = vec![0u8; LINE];
    let end = Instant::now() + BULK_TIMEOUT;
    for n in 0..WRITERS {
        let mut got = 0;
        while got < LINE {
            let k = read_some(&r, &mut buf[got..], end);
            assert!(k > 0, "EOF after {n} lines");
            got += k;
        }
        let id: usize = std::str::from_utf8(&buf[1..5])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("line {n} is not a writer's: {:?}", &buf[..16]));
        assert!(
            id < WRITERS && !seen[id],
            "line {n}: w{id:04} again or unknown"
        );
        assert_eq!(buf, line_of(id), "line {n} (w{id:04}) is not whole");
        seen[id] = true;
    }
    for b in batches {
        b.join(BULK_TIMEOUT);
    }
    // Whatever fifod still had comes out before the end it gives at stop.
    d.stop_ok();
    assert_no_more(&r, "after the thousand lines");
}
