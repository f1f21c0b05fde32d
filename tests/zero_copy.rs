//! What fifod's own system calls move: on byte routes, bytes go from pipe to
//! pipe by `splice`/`tee`, also while a sink falls behind and its bytes are
//! held, and never through a `read`/`write` of fifod's.

use std::time::Instant;

use crate::common::{
    Daemon, KIB, TEE_AND_SPLICE, TIMEOUT, Verifier, attach_strace, checked_counts, detach_strace,
    have_strace, num, open_reader, open_writer, pipe_pending, read_exact, sink_entry, spawn,
    status_until, wait_log, write_pattern,
};

/// Bytes that `read`/`write` calls in an strace log (`-y`, so every fd
/// shows what it is) moved through fds on a path under `dir`.
fn copied_through(trace: &str, dir: &str) -> usize {
    trace
        .lines()
        .filter(|l| l.contains(" read(") || l.contains(" write(") || l.contains("v("))
        .filter(|l| l.contains(&format!("<{dir}/")))
        .filter_map(|l| {
            l.rsplit_once(" = ")?
                .1
                .split_whitespace()
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum()
}

#[test]
fn byte_routes_move_held_bytes_without_copying_them() {
    if !have_strace() {
        println!("note: skipped: strace is not installed");
        return;
    }
    const SEED: u64 = 0x5e1;
    const LEN: usize = 4 * 1024 * KIB;
    const HELD: u64 = 512 * KIB as u64;
    // Fan-out (tee), one to one (splice), and routes that drop the newest
    // and the oldest bytes; the readers of b, c, d and e come late, so their
    // bytes are held for them first (and d's and e's routes, once full,
    // drop).
    let d = Daemon::start(&format!(
        r#"
[daemon]
pipe_size = "64KiB"
{TEE_AND_SPLICE}
[fifo.in3]
[fifo.d]

[[route]]
from = ["in3"]
to = ["d"]
buffer = "256KiB"
when_full = "drop-newest"

[fifo.in4]
[fifo.e]

[[route]]
from = ["in4"]
to = ["e"]
buffer = "256KiB"
when_full = "drop-oldest"
"#
    ));
    let trace = d.sb.path("strace.out");
    let strace = attach_strace(d.pid(), &trace, &["trace=read,write,readv,writev"]);
    let reader = |name: &str, seed: u64| {
        let r = open_reader(&d.fifo(name));
        spawn(move || Verifier::new(seed, 0).check(&read_exact(&r, LEN, TIMEOUT * 3)))
    };
    let a = reader("a", SEED);
    let writers: Vec<_> = [
        ("in", SEED),
        ("in2", SEED + 1),
        ("in3", SEED + 2),
        ("in4", SEED + 3),
    ]
    .into_iter()
    .map(|(name, seed)| {
        let w = open_writer(&d.fifo(name));
        spawn(move || write_pattern(&w, seed, 0, LEN, Instant::now() + TIMEOUT * 3))
    })
    .collect();
    status_until(&d, "bytes held for b and c", |st| {
        num(sink_entry(st, 0, "b"), "held") >= HELD && num(sink_entry(st, 1, "c"), "held") >= HELD
    });
    let late = [reader("b", SEED), reader("c", SEED + 1)];
    for w in writers {
        w.join(TIMEOUT * 4);
    }
    // d holds its pipe's 64 KiB and its 256 KiB: the stream's first bytes.
    status_until(&d, "everything written to in3 taken", |st| {
        num(sink_entry(st, 2, "d"), "produced") == LEN as u64
    });
    let kept = 320 * KIB;
    let r = open_reader(&d.fifo("d"));
    if let Err(e) = Verifier::new(SEED + 2, 0).check(&read_exact(&r, kept, TIMEOUT)) {
        panic!("d: {e}\n--- log ---\n{}", d.log());
    }
    let st = status_until(&d, "d read", |st| num(sink_entry(st, 2, "d"), "held") == 0);
    let (sink_d, _) = checked_counts(sink_entry(&st, 2, "d"));
    assert_eq!(sink_d.delivered, kept as u64, "{sink_d:?}");
    assert_eq!(sink_d.dropped, (LEN - kept) as u64, "{sink_d:?}");
    assert_eq!(pipe_pending(&r), 0, "d has more");
    // e holds its pipe's 64 KiB, the stream's first bytes, and its 256 KiB,
    // the last ones.
    status_until(&d, "everything written to in4 taken", |st| {
        num(sink_entry(st, 3, "e"), "produced") == LEN as u64
    });
    wait_log(&d, "e's drops logged", TIMEOUT, |log| {
        log.contains("-> e: dropped") && log.contains("(when_full = drop-oldest)")
    });
    let r = open_reader(&d.fifo("e"));
    let first = read_exact(&r, 64 * KIB, TIMEOUT);
    let last = read_exact(&r, 256 * KIB, TIMEOUT);
    let (seed, from) = (SEED + 3, (LEN - 256 * KIB) as u64);
    if let Err(e) = Verifier::new(seed, 0)
        .check(&first)
        .and_then(|()| Verifier::new(seed, from).check(&last))
    {
        panic!("e: {e}\n--- log ---\n{}", d.log());
    }
    let st = status_until(&d, "e read", |st| num(sink_entry(st, 3, "e"), "held") == 0);
    let (sink_e, _) = checked_counts(sink_entry(&st, 3, "e"));
    assert_eq!(sink_e.dropped, (LEN - 320 * KIB) as u64, "{sink_e:?}");
    assert_eq!(pipe_pending(&r), 0, "e has more");
    for r in [a].into_iter().chain(late) {
        if let Err(e) = r.join(TIMEOUT * 4) {
            panic!("{e}\n--- log ---\n{}", d.log());
        }
    }
    detach_strace(strace);
    let traced = std::fs::read_to_string(&trace).unwrap_or_default();
    let run_dir = d.sb.run_dir().display().to_string();
    let copied = copied_through(&traced, &run_dir);
    // A rare fallback (a pipe that takes fewer bytes than it has room
    // for) may copy a little; the held megabytes must not be copied.
    assert!(
        copied < 64 * KIB,
        "{copied} of {} bytes went through fifod's read/write\n--- trace (head) ---\n{}",
        5 * LEN,
        traced.lines().take(40).collect::<Vec<_>>().join("\n")
    );
}
