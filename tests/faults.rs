//! Faults: readers and writers killed mid-stream, a soak of writers that
//! come and go, SIGKILL of fifod and a restart on what it left, SIGTERM
//! under load, children that misbehave, resource limits, and a storm of
//! SIGHUPs.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::PollFlags;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::{
    BULK_TIMEOUT, Daemon, Guarded, IN_OUT, KIB, Launch, MIB, Rng, STOP_TIMEOUT, Sandbox, TIMEOUT,
    Verifier, assert_clean_stats, assert_no_more, assert_stats_in, exits, fifo_entry, is_root,
    live_running, lstat, names_in, num, open_reader, open_writer, parse_stats, pattern,
    pipe_pending, poll_one, proc_stat, process_entry, read_exact, read_some, read_to_eof, relays,
    reload_outcomes, sink_entry, spawn, started_pids, status_json, status_of, status_until,
    under_prlimit, wait_child, wait_log, wait_until, write_all, write_until_stalled,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A child process killed with SIGKILL (and reaped) when dropped, so that
/// a failing test leaves nothing running.
#[derive(Debug)]
struct Killed(Child);

impl Killed {
    fn spawn(cmd: &mut Command) -> Killed {
        Killed(cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL, then waits (deadline) for it to be gone.
    fn kill(&mut self) {
        kill(Pid::from_raw(self.pid() as i32), Signal::SIGKILL).expect("SIGKILL");
        assert!(
            wait_child(&mut self.0, TIMEOUT).is_some(),
            "pid {} survived SIGKILL",
            self.pid()
        );
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn set_nonblocking(f: &File) {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(f, FcntlArg::F_GETFL).expect("F_GETFL"));
    fcntl(f, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).expect("F_SETFL");
}

/// The capacity of the pipe behind `f`.
fn pipe_capacity(f: &File) -> usize {
    let n = nix::fcntl::fcntl(f, nix::fcntl::FcntlArg::F_GETPIPE_SZ).expect("F_GETPIPE_SZ");
    usize::try_from(n).expect("negative pipe size")
}

/// The system call `pid` sleeps in, interruptibly (its number), or None
/// if it runs or is gone. A pipe write waiting for room sleeps so; one
/// waiting for the pipe's lock, briefly, does not.
fn blocked_in(pid: u32) -> Option<libc::c_long> {
    let (state, _, _) = proc_stat(pid as i32)?;
    if state != 'S' {
        return None;
    }
    let text = fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// System calls a program may be sleeping in while writing to a pipe.
const WRITE_CALLS: [libc::c_long; 5] = [
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_splice,
    libc::SYS_sendfile,
    libc::SYS_copy_file_range,
];

/// Resident memory of `pid`, in KiB.
fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `fifod status --json` must answer; returns how long it took.
fn timed_status(sb: &Sandbox) -> Duration {
    let t0 = Instant::now();
    let out = status_of(sb, true);
    out.assert_code(0);
    t0.elapsed()
}

/// How many lines of the file at `path` contain `needle` (read as a stream:
/// a flooded log may be large).
fn count_lines_with(path: &Path, needle: &str) -> usize {
    let f = File::open(path).expect("open log");
    BufReader::new(f)
        .split(b'\n')
        .map_while(Result::ok)
        .filter(|l| String::from_utf8_lossy(l).contains(needle))
        .count()
}

const BLOCKING_IN_OUT: &str = r#"
[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
buffer = "64KiB"
when_full = "block"
"#;

// ---------------------------------------------------------------------------
// 1. Readers killed mid-stream
// ---------------------------------------------------------------------------

/// Bytes `offset..offset+len` of the counter stream: 8-byte big-endian
/// counters 0, 1, 2, …
fn counters(offset: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut off = offset;
    while out.len() < len {
        let record = (off / 8).to_be_bytes();
        let within = (off % 8) as usize;
        let n = (8 - within).min(len - out.len());
        out.extend_from_slice(&record[within..within + n]);
        off += n as u64;
    }
    out
}

/// Where in the counter stream `data` comes from, if it is a piece of it
/// at least three records long.
fn locate(data: &[u8]) -> Option<u64> {
    (0..8usize).find_map(|shift| {
        let at = |i: usize| -> Option<u64> {
            let b = data.get(shift + 8 * i..shift + 8 * i + 8)?;
            Some(u64::from_be_bytes(b.try_into().ok()?))
        };
        let first = at(0)?;
        (at(1)? == first + 1).then_some(())?;
        let offset = (first * 8).checked_sub(shift as u64)?;
        (counters(offset, data.len()) == data).then_some(offset)
    })
}

/// Checks that `data`, read by `who`, is the counter stream from byte
/// `offset`, where the readers before it stopped consuming.
fn assert_continues(who: &str, offset: u64, data: &[u8]) {
    if counters(offset, data.len()) == data {
        return;
    }
    let head = &data[..data.len().min(4 * KIB)];
    let found = match locate(head) {
        Some(at) if at > offset => format!(
            "it starts at byte {at} (counter {}): {} bytes held for it were lost",
            at / 8,
            at - offset
        ),
        Some(at) => format!(
            "it starts at byte {at} (counter {}): {} bytes came twice",
            at / 8,
            offset - at
        ),
        None => format!("its first bytes are no piece of the stream: {head:02x?}"),
    };
    let good = data
        .iter()
        .zip(counters(offset, data.len()))
        .take_while(|(a, b)| **a == *b)
        .count();
    let before = match offset % 8 {
        0 if offset == 0 => "nothing".to_string(),
        0 => format!("counters 0 to {}", offset / 8 - 1),
        part => format!("counters up to {} and {part} bytes of the next", offset / 8),
    };
    panic!(
        "{who}: expected the stream from byte {offset} (the readers before it consumed \
         {before}), but {found}; the first {good} bytes matched"
    );
}

/// Starts `dd` reading `path` one 8-byte record at a time, its output into
/// a pipe; returns it and the (non-blocking) read end of that pipe.
fn dd_reader(path: &Path) -> (Killed, File) {
    let mut dd = Killed::spawn(
        Command::new("dd")
            .arg(format!("if={}", path.display()))
            .args(["bs=8", "iflag=fullblock", "status=none"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let out: OwnedFd = dd.0.stdout.take().expect("dd's stdout").into();
    let out = File::from(out);
    set_nonblocking(&out);
    (dd, out)
}

/// Readers killed while the writer streams and the route blocks: each
/// replacement reader starts exactly where the dead one's consumption
/// stopped; what sat in the pipe and what fifod held is all there.
#[test]
fn a_reader_killed_mid_stream_loses_only_what_it_read() {
    const TOTAL: usize = 8 * MIB;
    let mut d = Daemon::start(BLOCKING_IN_OUT);
    let w = open_writer(&d.fifo("in"));
    let writer = spawn(move || {
        let end = Instant::now() + BULK_TIMEOUT;
        let mut done = 0;
        while done < TOTAL {
            let n = (64 * KIB).min(TOTAL - done);
            write_all(&w, &counters(done as u64, n), end);
            done += n;
        }
        w
    });
    let mut rng = Rng::new(0xdead_5ead);
    // Where the next reader must start: everything before was consumed.
    let mut consumed: u64 = 0;

    // Real processes, SIGKILLed: `dd` reads one record at a time and writes
    // it on; once its output is full it sleeps writing a record it has read.
    for round in 1..=3 {
        let (mut dd, out) = dd_reader(&d.fifo("out"));
        let want = rng.between(16 * KIB, 192 * KIB);
        let got = read_exact(&out, want, TIMEOUT);
        assert_continues(&format!("dd reader {round}"), consumed, &got);
        // Stop reading its output: dd fills it, then sleeps in write(2)
        // with its next record (nothing else can wake it: the pipe has no
        // room and nobody reads it); fifod's side fills up behind it.
        let cap = pipe_capacity(&out);
        let pid = dd.pid();
        assert!(
            wait_until(TIMEOUT, || pipe_pending(&out) > cap - 4096
                && blocked_in(pid) == Some(libc::SYS_write)),
            "dd reader {round} never blocked writing its output: {} of {cap} bytes in it, \
             dd in syscall {:?}",
            pipe_pending(&out),
            blocked_in(pid)
        );
        status_until(
            &d,
            "the pipe of out and fifod's buffer for it both holding bytes",
            |st| {
                num(fifo_entry(st, "out"), "queued") > 0
                    && num(sink_entry(st, 0, "out"), "held") > 0
            },
        );
        dd.kill();
        let rest = read_to_eof(&out, TIMEOUT);
        assert_continues(
            &format!("dd reader {round} (after its death)"),
            consumed + want as u64,
            &rest,
        );
        // The record it was writing when killed was consumed too: its loss.
        consumed += (want + rest.len() + 8) as u64;
        assert_eq!(consumed % 8, 0, "dd consumes whole records");
    }

    // Readers that vanish after reading any number of bytes, while fifod
    // keeps writing into the pipe.
    for round in 1..=40 {
        let r = open_reader(&d.fifo("out"));
        let n = rng.between(1, 64 * KIB);
        let got = read_exact(&r, n, TIMEOUT);
        assert_continues(&format!("reader {round}"), consumed, &got);
        consumed += n as u64;
        drop(r);
    }

    let r = open_reader(&d.fifo("out"));
    let rest = read_exact(&r, TOTAL - consumed as usize, BULK_TIMEOUT);
    assert_continues("the last reader", consumed, &rest);
    let w = writer.join(BULK_TIMEOUT);
    drop(w);
    d.stop_ok();
    assert_no_more(&r, "out");
    let n = TOTAL as u64;
    assert_clean_stats(&d, 0, "out", n);
}

// ---------------------------------------------------------------------------
// 2. Writers killed mid-write
// ---------------------------------------------------------------------------

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `dd bs=1M` and `cat` writers killed in the middle of a write bigger
/// than the pipe: fifod runs on, what they got into the pipe comes out as
/// a whole prefix of what they wrote, and a later writer's bytes follow.
#[test]
fn writers_killed_mid_write_leave_fifod_serving_later_writers() {
    // 1 MiB writes are bigger than these pipes.
    let mut d = Daemon::start(&format!(
        "[daemon]\npipe_size = \"64KiB\"\n{BLOCKING_IN_OUT}"
    ));
    let r = open_reader(&d.fifo("out"));
    // The later writer, and a way to tell how full `in` is.
    let later = open_writer(&d.fifo("in"));
    let cap = pipe_capacity(&later);
    let mut rng = Rng::new(0x0b5e55ed);
    let mut total = 0u64;
    for (round, kind) in ["dd", "cat", "dd", "cat"].into_iter().enumerate() {
        let seed = 700 + round as u64;
        let file = d.sb.path(&format!("pattern-{round}"));
        fs::write(&file, pattern(seed, 0, 8 * MIB)).unwrap();
        let input = d.fifo("in");
        let mut cmd = match kind {
            "dd" => {
                let mut c = Command::new("dd");
                c.arg(format!("if={}", file.display()))
                    .arg(format!("of={}", input.display()))
                    .args(["bs=1M", "status=none"]);
                c
            }
            _ => {
                let mut c = Command::new("sh");
                c.args(["-c", "exec cat \"$0\" > \"$1\""])
                    .arg(&file)
                    .arg(&input);
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut writer = Killed::spawn(&mut cmd);
        let want = rng.between(64 * KIB, 512 * KIB);
        let got = read_exact(&r, want, TIMEOUT);
        let mut v = Verifier::new(seed, 0);
        v.check(&got)
            .unwrap_or_else(|e| panic!("{kind} writer {round}: {e}"));
        // Stop reading: `in` fills up (its first and last pages may be
        // partly used) and the writer sleeps in the middle of its write.
        let pid = writer.pid();
        let mut call = None;
        assert!(
            wait_until(TIMEOUT, || {
                call = blocked_in(pid);
                pipe_pending(&later) > cap - 8192 && call.is_some_and(|c| WRITE_CALLS.contains(&c))
            }),
            "{kind} writer {round} never blocked writing (last seen in syscall {call:?}, \
             {} of {cap} bytes in `in`)",
            pipe_pending(&later)
        );
        writer.kill();
        assert_eq!(d.try_exited(), None, "fifod died with its writer");

        // A later writer: its bytes come right after the dead one's.
        let marker = pattern(9000 + round as u64, 0, 64);
        let w2 = later.try_clone().unwrap();
        let m2 = marker.clone();
        let marking = spawn(move || write_all(&w2, &m2, Instant::now() + TIMEOUT));
        let end = Instant::now() + TIMEOUT;
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * KIB];
        let at = loop {
            if let Some(at) = find(&buf, &marker) {
                break at;
            }
            let n = read_some(&r, &mut chunk, end);
            assert!(n > 0, "EOF on out");
            buf.extend_from_slice(&chunk[..n]);
        };
        marking.join(TIMEOUT);
        v.check(&buf[..at])
            .unwrap_or_else(|e| panic!("{kind} writer {round}, after its death: {e}"));
        assert_eq!(
            buf.len(),
            at + marker.len(),
            "bytes after the later writer's"
        );
        total += (want + buf.len()) as u64;
    }
    // The bytes of every writer, dead or not, and nothing else.
    let st = status_json(&d);
    assert_eq!(num(sink_entry(&st, 0, "out"), "delivered"), total, "{st}");
    drop(later);
    d.stop_ok();
    assert_no_more(&r, "out");
    assert_clean_stats(&d, 0, "out", total);
}

// ---------------------------------------------------------------------------
// 3. Soak: writers that come and go
// ---------------------------------------------------------------------------

const SOAK_WRITERS: usize = 50;

/// `FIFOD_SOAK_SECS`, else 30 s.
fn soak_duration() -> Duration {
    let secs = std::env::var("FIFOD_SOAK_SECS")
        .ok()
        .map(|s| {
            s.trim()
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("FIFOD_SOAK_SECS={s:?} is not a number of seconds"))
        })
        .unwrap_or(30.0);
    Duration::from_secs_f64(secs.max(0.1))
}

/// Line `seq` of writer `id`: `ID SEQ LEN FILLER\n`, the filler drawn from
/// (id, seq), under PIPE_BUF in all.
fn soak_line(id: usize, seq: u64) -> Vec<u8> {
    let mut rng = Rng::new(((id as u64) << 40) ^ seq ^ 0x50a4);
    let len = rng.between(0, 3000);
    let mut line = format!("{id:02} {seq:08} {len:04} ").into_bytes();
    line.extend((0..len).map(|_| b'a' + (rng.next() % 26) as u8));
    line.push(b'\n');
    line
}

/// One writer of the soak: connects, writes a few lines (each write(2) of
/// whole lines and at most PIPE_BUF, so the kernel keeps it whole), leaves,
/// pauses, until `until`.
fn soak_writer(id: usize, path: PathBuf, until: Instant, failed: Arc<AtomicBool>) -> Tally {
    let mut rng = Rng::new(0x5eed_0000 + id as u64);
    let (mut seq, mut bytes, mut connections) = (0u64, 0u64, 0u64);
    // A writer blocked by backpressure gets long enough to finish.
    let end = until + BULK_TIMEOUT;
    while Instant::now() < until && !failed.load(Ordering::SeqCst) {
        let f = open_writer(&path);
        connections += 1;
        let mut batch: Vec<u8> = Vec::new();
        for _ in 0..rng.between(1, 6) {
            let line = soak_line(id, seq);
            if batch.len() + line.len() > libc::PIPE_BUF {
                write_all(&f, &batch, end);
                batch.clear();
            }
            batch.extend_from_slice(&line);
            bytes += line.len() as u64;
            seq += 1;
        }
        write_all(&f, &batch, end);
        drop(f);
        std::thread::sleep(Duration::from_micros(rng.between(0, 3000) as u64));
    }
    Tally {
        id,
        lines: seq,
        bytes,
        connections,
    }
}

/// What one soak writer did.
#[derive(Debug, Clone, Copy)]
struct Tally {
    id: usize,
    lines: u64,
    bytes: u64,
    connections: u64,
}

/// Counts a soak writer as finished when its thread ends, however it ends.
#[derive(Debug)]
struct Finished(Arc<AtomicUsize>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// What the soak's reader saw.
#[derive(Debug, Default)]
struct SoakSeen {
    next: Vec<u64>,
    lines: u64,
    bytes: u64,
}

/// Reads `out` until told to stop (`target` lines reached), checking that
/// each line is whole and the next one of its writer.
fn soak_reader(
    r: File,
    lines: Arc<AtomicU64>,
    target: Arc<AtomicU64>,
    failure: Arc<Mutex<Option<String>>>,
) -> (File, SoakSeen) {
    let mut seen = SoakSeen {
        next: vec![0; SOAK_WRITERS],
        ..SoakSeen::default()
    };
    let mut buf = vec![0u8; 256 * KIB];
    let mut partial: Vec<u8> = Vec::new();
    let fail = |why: String| {
        *failure.lock().unwrap() = Some(why);
    };
    while seen.lines < target.load(Ordering::SeqCst) {
        if poll_one(&r, PollFlags::POLLIN, Duration::from_millis(200)).is_empty() {
            continue;
        }
        let k = match (&r).read(&mut buf) {
            Ok(0) => {
                fail(format!("EOF after {} lines", seen.lines));
                break;
            }
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                fail(format!("read: {e}"));
                break;
            }
        };
        partial.extend_from_slice(&buf[..k]);
        let complete = partial
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        for got in partial[..complete].split_inclusive(|&b| b == b'\n') {
            let text = String::from_utf8_lossy(got);
            let mut fields = text.split(' ');
            let id: Option<usize> = fields.next().and_then(|s| s.parse().ok());
            let seq: Option<u64> = fields.next().and_then(|s| s.parse().ok());
            let (Some(id), Some(seq)) = (id, seq) else {
                fail(format!("line {} is no writer's: {text:?}", seen.lines));
                return (r, seen);
            };
            if id >= SOAK_WRITERS || got != soak_line(id, seq).as_slice() {
                fail(format!(
                    "line {} is not whole or not as written: {text:?}",
                    seen.lines
                ));
                return (r, seen);
            }
            if seq != seen.next[id] {
                fail(format!(
                    "writer {id}: line {seq} came where line {} was due ({})",
                    seen.next[id],
                    if seq > seen.next[id] {
                        "lines lost"
                    } else {
                        "a line twice or out of order"
                    }
                ));
                return (r, seen);
            }
            seen.next[id] += 1;
            seen.lines += 1;
            seen.bytes += got.len() as u64;
        }
        partial.drain(..complete);
        lines.store(seen.lines, Ordering::SeqCst);
    }
    if !partial.is_empty() {
        fail(format!("{} bytes after the last whole line", partial.len()));
    }
    (r, seen)
}

/// 50 writers connect, write a few lines, leave and come back, at random,
/// into two inputs merged line by line into one output: every line comes
/// whole, each writer's in order, none lost, none twice.
#[test]
fn soak_fifty_writers_coming_and_going() {
    let soak = soak_duration();
    let mut d = Daemon::start(
        r#"
[fifo.in0]
[fifo.in1]
[fifo.out]

[[route]]
from = ["in0", "in1"]
to = ["out"]
framing = "lines"
buffer = "256KiB"
when_full = "block"
"#,
    );
    let t0 = Instant::now();
    let r = open_reader(&d.fifo("out"));
    let lines = Arc::new(AtomicU64::new(0));
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let reader = {
        let (lines, target, failure) = (lines.clone(), target.clone(), failure.clone());
        spawn(move || soak_reader(r, lines, target, failure))
    };
    let until = Instant::now() + soak;
    let failed = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicUsize::new(0));
    let results: Arc<Mutex<Vec<Tally>>> = Arc::default();
    for id in 0..SOAK_WRITERS {
        let path = d.fifo(if id % 2 == 0 { "in0" } else { "in1" });
        let (failed, finished, results) = (failed.clone(), finished.clone(), results.clone());
        std::thread::spawn(move || {
            // Counted as finished even if it panics (its message is printed).
            let _done = Finished(finished);
            let got = soak_writer(id, path, until, failed);
            results.lock().unwrap().push(got);
        });
    }
    let check_failure = |d: &mut Daemon| {
        if let Some(why) = failure.lock().unwrap().clone() {
            failed.store(true, Ordering::SeqCst);
            panic!("{why}\n--- log ---\n{}", d.log());
        }
        assert_eq!(d.try_exited(), None, "fifod exited during the soak");
    };
    let writers_end = until + BULK_TIMEOUT;
    while finished.load(Ordering::SeqCst) < SOAK_WRITERS {
        check_failure(&mut d);
        assert!(
            Instant::now() < writers_end,
            "{} writers still writing {BULK_TIMEOUT:?} after the soak's end",
            SOAK_WRITERS - finished.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let results = std::mem::take(&mut *results.lock().unwrap());
    assert_eq!(results.len(), SOAK_WRITERS, "a writer panicked");
    let total_lines: u64 = results.iter().map(|t| t.lines).sum();
    let total_bytes: u64 = results.iter().map(|t| t.bytes).sum();
    let connections: u64 = results.iter().map(|t| t.connections).sum();
    target.store(total_lines, Ordering::SeqCst);
    // The reader catches up: it must keep moving.
    let mut last = (lines.load(Ordering::SeqCst), Instant::now());
    while lines.load(Ordering::SeqCst) < total_lines {
        check_failure(&mut d);
        let now = lines.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        }
        assert!(
            last.1.elapsed() < TIMEOUT,
            "the reader got {now} of {total_lines} lines and nothing more for {TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (r, seen) = reader.join(TIMEOUT);
    check_failure(&mut d);
    for t in &results {
        assert_eq!(
            seen.next[t.id], t.lines,
            "writer {}: lines read vs written",
            t.id
        );
    }
    assert_eq!((seen.lines, seen.bytes), (total_lines, total_bytes));
    d.stop_ok();
    assert_no_more(&r, "out");
    assert_clean_stats(&d, 0, "out", total_bytes);
    eprintln!(
        "soak: {SOAK_WRITERS} writers for {soak:?} ({:?} in all): {connections} connections, \
         {total_lines} lines, {total_bytes} bytes",
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 4. SIGKILL of fifod, then a new one on the same config
// ---------------------------------------------------------------------------

/// fifod killed with SIGKILL while writers and readers are connected and
/// every buffer is full; a new fifod on the same config adopts the FIFOs,
/// takes the lock and the control socket, and carries on: what sat in the
/// pipes reaches the reader, only what the dead one held in memory is gone.
#[test]
fn after_sigkill_a_new_fifod_adopts_what_the_dead_one_left() {
    let shared = Sandbox::new();
    let toml = format!(
        r#"
[daemon]
dir = "{}"

[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
buffer = "4KiB"
when_full = "block"
"#,
        shared.run_dir().display()
    );
    let run = shared.run_dir();
    let seed = 0x4b111;
    let mut d1 = Daemon::start(&toml);
    let w = open_writer(&run.join("in"));
    let r = open_reader(&run.join("out"));
    // Fill everything: the pipe of out, fifod's buffer, the pipe of in.
    let written = write_until_stalled(&w, seed, 16 * MIB as u64, Duration::from_millis(500));
    d1.wait_idle(&[]);
    let st = status_json(&d1);
    let out = sink_entry(&st, 0, "out");
    let (delivered, held) = (num(out, "delivered"), num(out, "held"));
    let in_queued = num(fifo_entry(&st, "in"), "queued");
    assert_eq!(num(fifo_entry(&st, "out"), "queued"), delivered, "{st}");
    assert_eq!(delivered + held + in_queued, written, "{st}");
    let inodes: Vec<u64> = ["in", "out"]
        .iter()
        .map(|n| lstat(&run.join(n)).unwrap().ino())
        .collect();

    let st = d1.stop(Signal::SIGKILL);
    assert_eq!(st.code(), None, "{st:?}");
    let lock = run.join(".fifod.lock");
    assert_eq!(
        fs::read_to_string(&lock).unwrap().trim(),
        d1.pid().to_string(),
        "the dead one's lock file"
    );
    assert!(
        lstat(&run.join("control.sock")).is_some_and(|m| m.file_type().is_socket()),
        "the dead one's control socket"
    );

    let mut d2 = Daemon::start(&toml);
    let log = d2.log();
    for name in ["in", "out"] {
        let path = run.join(name).display().to_string();
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("adopted fifo {name} at {path}"))),
            "no `adopted fifo {name}`:\n{log}"
        );
    }
    let after: Vec<u64> = ["in", "out"]
        .iter()
        .map(|n| lstat(&run.join(n)).expect("still there").ino())
        .collect();
    assert_eq!(after, inodes, "the FIFOs were made anew, not adopted");
    assert_eq!(
        fs::read_to_string(&lock).unwrap().trim(),
        d2.pid().to_string(),
        "the lock file names the new fifod\n{log}"
    );
    assert_eq!(
        num(&status_json(&d2), "pid"),
        u64::from(d2.pid()),
        "the control socket is the new fifod's"
    );

    // The reader and the writer connected to the dead fifod carry on: the
    // pipe of out still holds what it held, the pipe of in is read now.
    let expected_len = (delivered + in_queued) as usize;
    let got = read_exact(&r, expected_len, TIMEOUT);
    let mut v = Verifier::new(seed, 0);
    v.check(&got[..delivered as usize])
        .unwrap_or_else(|e| panic!("what sat in out's pipe: {e}"));
    let mut v = Verifier::new(seed, delivered + held);
    v.check(&got[delivered as usize..]).unwrap_or_else(|e| {
        panic!("what sat in in's pipe (after the {held} bytes the dead fifod held): {e}")
    });
    let more = 100 * KIB;
    crate::common::write_pattern(&w, seed, written, more, Instant::now() + TIMEOUT);
    let got = read_exact(&r, more, TIMEOUT);
    Verifier::new(seed, written).check(&got).unwrap();

    drop(w);
    d2.stop_ok();
    let n = in_queued + more as u64;
    assert_clean_stats(&d2, 0, "out", n);
    for name in ["in", "out", ".fifod.lock", "control.sock"] {
        assert!(
            lstat(&run.join(name)).is_none(),
            "{name} left after the stop\n{}",
            d2.log()
        );
    }
    drop(r);
}

// ---------------------------------------------------------------------------
// 5. SIGTERM under load
// ---------------------------------------------------------------------------

/// A writer keeps `in` full and a reader keeps reading `out`, more slowly,
/// so that every buffer on the way is full: after SIGTERM, everything fifod
/// accepted reaches the reader before fifod removes the FIFOs and exits.
#[test]
fn sigterm_under_full_load_delivers_everything_accepted() {
    let mut d = Daemon::start(
        r#"
[daemon]
shutdown_timeout = "30s"

[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
buffer = "256KiB"
when_full = "block"
"#,
    );
    let seed = 0x5167;
    let w = open_writer(&d.fifo("in"));
    let writer = spawn(move || {
        // Until fifod is gone (EPIPE): returns how much went into `in`.
        let mut written = 0u64;
        let mut chunk = vec![0u8; 64 * KIB];
        let end = Instant::now() + BULK_TIMEOUT;
        loop {
            crate::common::fill_pattern(seed, written, &mut chunk);
            match crate::common::try_write(&w, &chunk) {
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < end, "writer still blocked at its deadline");
                    poll_one(&w, PollFlags::POLLOUT, Duration::from_millis(100));
                }
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return written,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("write: {e}"),
            }
        }
    });
    let r = open_reader(&d.fifo("out"));
    let progress = Arc::new(AtomicU64::new(0));
    let reader = {
        let progress = progress.clone();
        spawn(move || {
            let end = Instant::now() + BULK_TIMEOUT;
            let mut v = Verifier::new(seed, 0);
            let mut buf = vec![0u8; 4 * KIB];
            loop {
                let k = read_some(&r, &mut buf, end);
                if k == 0 {
                    return Ok::<u64, String>(v.offset);
                }
                v.check(&buf[..k])?;
                progress.store(v.offset, Ordering::SeqCst);
                // Pacing: slower than the writer, so that the buffers fill.
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    assert!(
        wait_until(TIMEOUT, || progress.load(Ordering::SeqCst) >= MIB as u64),
        "the stream never got going"
    );
    status_until(&d, "the pipes and fifod's buffer all holding bytes", |st| {
        num(fifo_entry(st, "in"), "queued") > 0
            && num(sink_entry(st, 0, "out"), "held") > 0
            && num(fifo_entry(st, "out"), "queued") > 0
    });
    d.signal(Signal::SIGTERM);
    let st = d.wait_exit(STOP_TIMEOUT);
    assert_eq!(st.code(), Some(0), "{st:?}\n{}", d.log());
    let got = reader.join(TIMEOUT).unwrap();
    let written = writer.join(TIMEOUT);
    let log = d.log();
    let s = parse_stats(&log, 0, "out");
    assert_eq!(
        (s.dropped, s.undelivered),
        (0, 0),
        "fifod gave up on bytes it accepted\n{log}"
    );
    assert_eq!(
        got, s.delivered,
        "the reader got {got} bytes, fifod says it delivered {}\n{log}",
        s.delivered
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("out: ") && l.contains("undelivered (")),
        "bytes left in out's pipe at the stop\n{log}"
    );
    // What the writer put in `in` after fifod took its share is reported.
    let unread: u64 = log
        .lines()
        .find_map(|l| {
            let rest = &l[l.find("in: ")? + 4..];
            rest.strip_suffix(" bytes left unread")?.parse().ok()
        })
        .unwrap_or(0);
    assert!(
        written >= s.accepted + unread,
        "written {written}, accepted {}, left in `in` {unread}\n{log}",
        s.accepted
    );
    for name in ["in", "out"] {
        assert!(lstat(&d.fifo(name)).is_none(), "{name} left\n{log}");
    }
}

/// A reader that opened `out` but never reads, and a 300 ms
/// `shutdown_timeout`: fifod exits soon after the timeout, and its log says
/// exactly what was left where.
#[test]
fn sigterm_with_a_stalled_reader_gives_up_after_the_timeout() {
    let mut d = Daemon::start(
        r#"
[daemon]
shutdown_timeout = "300ms"

[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
buffer = "64KiB"
when_full = "block"
"#,
    );
    let seed = 0x57a1;
    let r = open_reader(&d.fifo("out"));
    let w = open_writer(&d.fifo("in"));
    let written = write_until_stalled(&w, seed, 16 * MIB as u64, Duration::from_millis(500));
    d.wait_idle(&[]);
    let st = status_json(&d);
    let out = sink_entry(&st, 0, "out");
    let (in_pipe, held) = (num(fifo_entry(&st, "in"), "queued"), num(out, "held"));
    let out_pipe = num(fifo_entry(&st, "out"), "queued");
    assert_eq!(out_pipe + held + in_pipe, written, "{st}");
    assert!(out_pipe > 0 && held > 0 && in_pipe > 0, "{st}");

    let (st, took) = d.timed_stop(TIMEOUT);
    let log = d.log();
    assert_eq!(st.code(), Some(0), "{st:?}\n{log}");
    assert!(
        took >= Duration::from_millis(280),
        "exited after {took:?}, before its 300ms shutdown_timeout\n{log}"
    );
    assert!(
        took < Duration::from_millis(300) + Duration::from_secs(3),
        "exited {took:?} after SIGTERM, with a 300ms shutdown_timeout\n{log}"
    );
    assert_stats_in(&log, 0, "out", (out_pipe + held, out_pipe, 0, held));
    let undelivered = format!(
        "out: {} bytes undelivered ({held} held by fifod, {out_pipe} unread in the pipe)",
        held + out_pipe
    );
    assert!(log.contains(&undelivered), "no `{undelivered}`\n{log}");
    let unread = format!("in: {in_pipe} bytes left unread");
    assert!(log.contains(&unread), "no `{unread}`\n{log}");
    // What the log says is in out's pipe is there, and is the stream's start.
    let got = read_to_eof(&r, TIMEOUT);
    assert_eq!(got.len() as u64, out_pipe);
    Verifier::new(seed, 0).check(&got).unwrap();
    for name in ["in", "out"] {
        assert!(lstat(&d.fifo(name)).is_none(), "{name} left\n{log}");
    }
    drop(w);
}

// ---------------------------------------------------------------------------
// 6. Children that misbehave
// ---------------------------------------------------------------------------

/// Five processes that fail at once, forever, from a 1 ms back-off: the
/// delays double as announced, and fifod answers and relays meanwhile.
#[test]
fn crash_loops_back_off_and_fifod_stays_responsive() {
    let mut toml = String::from(IN_OUT);
    for i in 0..5 {
        toml.push_str(&format!(
            "\n[process.crash{i}]\ncommand = [\"sh\", \"-c\", \"exit 1\"]\nrestart_delay = \"1ms\"\n"
        ));
    }
    let mut d = Daemon::start(&toml);
    let w = open_writer(&d.fifo("in"));
    let r = open_reader(&d.fifo("out"));
    let mut slowest = Duration::ZERO;
    let mut round = 0u32;
    // While the loops are at their fastest: status and relaying.
    let restarted = |log: &str| (0..5).all(|i| exits(log, &format!("crash{i}")).len() >= 9);
    loop {
        slowest = slowest.max(timed_status(&d.sb));
        let msg = format!("round {round}\n");
        write_all(&w, msg.as_bytes(), Instant::now() + TIMEOUT);
        assert_eq!(read_exact(&r, msg.len(), TIMEOUT), msg.as_bytes());
        round += 1;
        if restarted(&d.log()) {
            break;
        }
        assert!(
            round < 2000,
            "the processes were not restarted 8 times\n{}",
            d.log()
        );
    }
    assert!(
        slowest < Duration::from_secs(5),
        "`fifod status` took {slowest:?} during the crash loops"
    );
    let log = d.log();
    let expected: Vec<String> = (0..8)
        .map(|i| format!("exited with status 1; restarting in {}ms", 1u32 << i))
        .collect();
    for i in 0..5 {
        let name = format!("crash{i}");
        let announced: Vec<String> = exits(&log, &name)
            .into_iter()
            .take(8)
            .map(|(_, how)| how)
            .collect();
        assert_eq!(announced, expected, "{name}\n{log}");
        assert!(started_pids(&log, &name).len() >= 9, "{name}\n{log}");
    }
    d.stop_ok();
}

/// Live processes running `sleep 778` (the grandchildren of the next test),
/// as (pid, pgrp).
fn grandchildren() -> Vec<(i32, i32)> {
    live_running(b"sleep\x00778\x00")
}

/// A process that starts a grandchild holding its stdout and stdin, then
/// fails, again and again: each grandchild dies when its parent is reaped,
/// so restarts are not held up and none is left.
#[test]
fn grandchildren_left_by_a_failing_process_die_at_each_restart() {
    let mut g = Guarded(Daemon::start(
        r#"
[fifo.in]
[fifo.out]

[process.parent]
command = ["sh", "-c", "sleep 778 <&0 & echo up; exit 1"]
restart_delay = "20ms"

[[route]]
from = ["in"]
to = ["parent"]

[[route]]
from = ["parent"]
to = ["out"]
"#,
    ));
    let d = &mut g.0;
    let r = open_reader(&d.fifo("out"));
    let w = open_writer(&d.fifo("in"));
    write_all(&w, b"for whoever reads\n", Instant::now() + TIMEOUT);
    let log = wait_log(d, "5 runs of parent", TIMEOUT, |log| {
        exits(log, "parent").len() >= 5
    });
    let got = read_exact(&r, 5 * 3, TIMEOUT);
    assert_eq!(got, b"up\n".repeat(5), "{}", d.log());
    // Every run that was reaped took its grandchild with it.
    let reaped: Vec<i32> = exits(&log, "parent").iter().map(|(p, _)| *p).collect();
    let mut left = Vec::new();
    assert!(
        wait_until(TIMEOUT, || {
            left = grandchildren()
                .into_iter()
                .filter(|(_, g)| reaped.contains(g))
                .collect();
            left.is_empty()
        }),
        "grandchildren (pid, group) {left:?} outlived their parents\n{}",
        d.log()
    );
    d.stop_ok();
    let log = d.log();
    let all = started_pids(&log, "parent");
    let left: Vec<(i32, i32)> = grandchildren()
        .into_iter()
        .filter(|(_, g)| all.contains(g))
        .collect();
    assert!(left.is_empty(), "left after the stop: {left:?}\n{log}");
    drop(w);
}

/// A process that closes all three of its streams and lingers, restarted
/// forever: fifod keeps relaying elsewhere, answers, and accounts for what
/// was meant for it.
#[test]
fn a_process_that_closes_all_its_streams_does_not_disturb_fifod() {
    let mut d = Daemon::start(
        r#"
[daemon]
shutdown_timeout = "2s"

[fifo.in]
[fifo.out]
[fifo.other-in]
[fifo.other-out]

[process.closer]
command = ["sh", "-c", "exec 0<&- 1>&- 2>&-; sleep 1"]
restart = "always"
restart_delay = "50ms"

[[route]]
from = ["in"]
to = ["closer"]

[[route]]
from = ["closer"]
to = ["out"]

[[route]]
from = ["other-in"]
to = ["other-out"]
"#,
    );
    let w = open_writer(&d.fifo("in"));
    let ow = open_writer(&d.fifo("other-in"));
    let or = open_reader(&d.fifo("other-out"));
    let out = open_reader(&d.fifo("out"));
    let mut sent = 0u64;
    let mut round = 0;
    loop {
        let data = pattern(round, 0, 1000);
        write_all(&w, &data, Instant::now() + TIMEOUT);
        sent += data.len() as u64;
        let msg = format!("other {round}\n");
        write_all(&ow, msg.as_bytes(), Instant::now() + TIMEOUT);
        assert_eq!(read_exact(&or, msg.len(), TIMEOUT), msg.as_bytes());
        timed_status(&d.sb);
        round += 1;
        if started_pids(&d.log(), "closer").len() >= 3 {
            break;
        }
        assert!(round < 10_000, "closer not restarted twice\n{}", d.log());
    }
    assert_eq!(d.try_exited(), None);
    d.stop_ok();
    let log = d.log();
    let s = d.stats(0, "closer");
    assert_eq!(s.accepted, sent, "{log}");
    assert_clean_out(&d, &out);
}

/// Nothing came out of `out` (the closer writes nothing).
fn assert_clean_out(d: &Daemon, out: &File) {
    assert_no_more(out, "out");
    assert_clean_stats(d, 1, "out", 0);
}

/// A process that floods its stderr, logged: fifod answers, relays, and
/// keeps its memory bounded.
#[test]
fn a_process_flooding_stderr_into_the_log_keeps_fifod_responsive_and_small() {
    const RSS_LIMIT_KIB: u64 = 64 * 1024;
    let mut d = Daemon::start(
        r#"
[fifo.in]
[fifo.out]

[process.flood]
command = ["sh", "-c", "exec yes 1>&2"]
stderr = "log"

[[route]]
from = ["in"]
to = ["out"]
"#,
    );
    let log_path = d.log_path().to_path_buf();
    let pid = d.pid();
    let w = open_writer(&d.fifo("in"));
    let r = open_reader(&d.fifo("out"));
    let t0 = Instant::now();
    let (mut slowest, mut peak, mut rounds) = (Duration::ZERO, 0u64, 0);
    while t0.elapsed() < Duration::from_secs(3) || rounds < 3 {
        slowest = slowest.max(timed_status(&d.sb));
        let msg = format!("round {rounds}\n");
        let t = Instant::now();
        write_all(&w, msg.as_bytes(), t + TIMEOUT);
        assert_eq!(read_exact(&r, msg.len(), TIMEOUT), msg.as_bytes());
        slowest = slowest.max(t.elapsed());
        peak = peak.max(vm_rss_kib(pid).expect("fifod's VmRSS"));
        rounds += 1;
    }
    let logged = fs::metadata(&log_path).unwrap().len();
    let flood_lines = count_lines_with(&log_path, "flood.stderr: y");
    eprintln!(
        "stderr flood: {flood_lines} lines logged ({logged} bytes of log) in {:?}; \
         slowest answer {slowest:?}; peak VmRSS {peak} KiB",
        t0.elapsed()
    );
    assert!(
        flood_lines > 1000,
        "the flood was hardly logged: {flood_lines} lines"
    );
    assert!(
        slowest < Duration::from_secs(5),
        "fifod took {slowest:?} to answer or relay during the flood"
    );
    assert!(
        peak < RSS_LIMIT_KIB,
        "fifod's VmRSS reached {peak} KiB during the flood"
    );
    d.stop_ok();
    drop(w);
}

// ---------------------------------------------------------------------------
// 7. Resource limits
// ---------------------------------------------------------------------------

/// A size as fifod writes it in its log.
fn size_text(n: u64) -> String {
    for (factor, unit) in [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if n >= factor && n.is_multiple_of(factor) {
            return format!("{}{unit}", n / factor);
        }
    }
    format!("{n}B")
}

/// `pairs` routes `inN -> outN`.
fn pairs_config(pairs: usize, daemon: &str) -> String {
    let mut toml = format!("[daemon]\n{daemon}\n");
    for i in 0..pairs {
        toml.push_str(&format!(
            "\n[fifo.in{i}]\n[fifo.out{i}]\n[[route]]\nfrom = [\"in{i}\"]\nto = [\"out{i}\"]\n"
        ));
    }
    toml
}

/// Writes a line into each `inN` and reads it from `outN`.
fn assert_pairs_relay(dir: &Path, pairs: usize) {
    for i in 0..pairs {
        let (input, output) = (dir.join(format!("in{i}")), dir.join(format!("out{i}")));
        relays(&input, &output, format!("through pair {i}\n").as_bytes());
    }
}

/// 40 FIFOs under a hard limit of 20 open files: a clear error at start,
/// exit 1, and the existing directory is left as it was.
#[test]
fn forty_fifos_under_a_limit_of_twenty_files_fail_at_start() {
    let sb = Sandbox::new();
    fs::create_dir(sb.run_dir()).unwrap();
    sb.write_config(&pairs_config(20, ""));
    let bin = under_prlimit(&sb, "20:20");
    let out = sb.run_expect_exit(&Launch {
        bin: Some(bin),
        ..Launch::default()
    });
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("the config needs about 144 file descriptors, but RLIMIT_NOFILE allows 20"),
        "{}",
        out.stderr
    );
    let left: Vec<_> = fs::read_dir(sb.run_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in dir: {left:?}");
}

/// A soft limit too low but a hard one high enough: fifod raises the soft
/// one, says so, and serves every FIFO.
#[test]
fn a_soft_file_limit_too_low_is_raised_to_the_hard_one() {
    let sb = Sandbox::new();
    sb.write_config(&pairs_config(20, ""));
    let bin = under_prlimit(&sb, "20:4096");
    let mut d = Daemon::start_with(
        sb,
        &Launch {
            bin: Some(bin),
            ..Launch::default()
        },
    );
    let log = d.log();
    assert!(
        log.contains("raised the open-file limit from 20 to 4096"),
        "{log}"
    );
    let limits = fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        line.split_whitespace().skip(3).take(2).collect::<Vec<_>>(),
        ["4096", "4096"],
        "{line}"
    );
    assert_pairs_relay(&d.sb.run_dir(), 20);
    d.stop_ok();
}

/// A reload to a config that needs more files than the limit allows fails
/// as a whole: the running config stays, and no node of the new one is
/// left on disk, then or after the stop.
#[test]
fn a_reload_beyond_the_file_limit_fails_and_leaves_nothing_behind() {
    let sb = Sandbox::new();
    sb.write_config(&pairs_config(1, ""));
    let bin = under_prlimit(&sb, "80:80");
    let mut d = Daemon::start_with(
        sb,
        &Launch {
            bin: Some(bin),
            ..Launch::default()
        },
    );
    let run = d.sb.run_dir();
    let before = names_in(&run);
    d.sb.write_config(&pairs_config(40, ""));
    let outcome = d.reload();
    let log = d.log();
    assert!(
        outcome.is_err(),
        "a reload to 80 FIFOs under a limit of 80 files completed\n{log}"
    );
    assert_eq!(
        names_in(&run),
        before,
        "the failed reload ({outcome:?}) left nodes behind\n{log}"
    );
    assert_pairs_relay(&run, 1);
    d.stop_ok();
    let log = d.log();
    assert!(
        lstat(&run).is_none(),
        "left after the stop: {:?}\n{log}",
        names_in(&run)
    );
}

/// A sandbox where fifod runs as `uid` without privilege: returns the
/// launch and the `dir` to use. As a non-root user, fifod runs as itself.
fn unprivileged(sb: &Sandbox, uid: u32) -> (Launch, PathBuf) {
    if !is_root() {
        return (Launch::default(), sb.run_dir());
    }
    fs::set_permissions(sb.root(), fs::Permissions::from_mode(0o755)).unwrap();
    let base = sb.path("unprivileged");
    fs::create_dir(&base).unwrap();
    std::os::unix::fs::chown(&base, Some(uid), Some(uid)).unwrap();
    let launch = Launch {
        user: Some((uid, uid)),
        ..Launch::default()
    };
    (launch, base.join("run"))
}

fn read_proc_number(path: &str) -> u64 {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{path}: not a number"))
}

/// Unprivileged, a `pipe_size` above /proc/sys/fs/pipe-max-size: fifod
/// warns, uses the cap, and relays.
#[test]
fn pipe_size_above_the_system_cap_is_capped_with_a_warning() {
    let max = read_proc_number("/proc/sys/fs/pipe-max-size");
    let want = 2 * max;
    if want > 1 << 30 {
        eprintln!("skipped: pipe-max-size {max} leaves no room below the 1 GiB pipe_size limit");
        return;
    }
    let sb = Sandbox::new();
    // A uid of its own: the kernel's pipe budget is per user.
    let (launch, dir) = unprivileged(&sb, 47_101);
    let cfg = sb.write_config(&format!(
        "[daemon]\ndir = \"{}\"\npipe_size = \"{want}\"\n{}",
        dir.display(),
        BLOCKING_IN_OUT
    ));
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o644)).unwrap();
    let mut d = Daemon::start_with(sb, &launch);
    let log = d.log();
    for name in ["in", "out"] {
        let warning = format!(
            "fifo {name}: pipe_size {} is above /proc/sys/fs/pipe-max-size ({max}); \
             using {max} bytes",
            size_text(want)
        );
        assert!(
            log.lines()
                .any(|l| l.contains(" WARN ") && l.contains(&warning)),
            "no warning `{warning}`\n{log}"
        );
    }
    let w = open_writer(&dir.join("in"));
    let r = open_reader(&dir.join("out"));
    assert_eq!(pipe_capacity(&w), max as usize);
    assert_eq!(pipe_capacity(&r), max as usize);
    let n = 300 * KIB;
    crate::common::write_pattern(&w, 71, 0, n, Instant::now() + TIMEOUT);
    Verifier::new(71, 0)
        .check(&read_exact(&r, n, TIMEOUT))
        .unwrap();
    d.stop_ok();
}

/// Unprivileged, more FIFOs × `pipe_size` than the user's pipe budget
/// (fs.pipe-user-pages-soft): the kernel refuses some; fifod warns for
/// each of those, keeps their size, and relays through all of them.
#[test]
fn pipe_size_refused_by_the_user_budget_warns_and_continues() {
    let soft_pages = read_proc_number("/proc/sys/fs/pipe-user-pages-soft");
    if soft_pages == 0 {
        eprintln!("skipped: fs.pipe-user-pages-soft is 0 (no budget to exceed)");
        return;
    }
    let size = read_proc_number("/proc/sys/fs/pipe-max-size").min(MIB as u64);
    let page = 4096u64;
    let fifos = (soft_pages * page).div_ceil(size) as usize + 8;
    let pairs = fifos.div_ceil(2);
    let sb = Sandbox::new();
    let (launch, dir) = unprivileged(&sb, 47_102);
    let cfg = sb.write_config(&pairs_config(
        pairs,
        &format!("dir = \"{}\"\npipe_size = \"{size}\"", dir.display()),
    ));
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o644)).unwrap();
    let mut d = Daemon::start_with(sb, &launch);
    let log = d.log();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains(": cannot set pipe_size "))
        .collect();
    assert!(
        !warned.is_empty(),
        "no FIFO was refused its pipe_size\n{log}"
    );
    // Which FIFOs got less than asked, and which were warned about.
    let mut small = Vec::new();
    for i in 0..pairs {
        for name in [format!("in{i}"), format!("out{i}")] {
            let f = open_reader(&dir.join(&name));
            if (pipe_capacity(&f) as u64) < size {
                small.push(name);
            }
        }
    }
    let mut named: Vec<String> = warned
        .iter()
        .filter_map(|l| {
            let rest = &l[l.find("fifo ")? + 5..];
            Some(rest[..rest.find(':')?].to_string())
        })
        .collect();
    let lines = named.len();
    named.sort();
    named.dedup();
    small.sort();
    assert_eq!(named, small, "warned about vs refused\n{log}");
    if lines != named.len() {
        eprintln!(
            "note: {lines} `cannot set pipe_size` warnings for {} FIFOs",
            named.len()
        );
    }
    assert_pairs_relay(&dir, pairs);
    d.stop_ok();
}

/// Without `pipe_size`, an unprivileged fifod gives its FIFOs 1 MiB (at
/// most pipe-max-size) while they take at most a quarter of the user's
/// pipe budget, and relays through them.
#[test]
fn pipe_size_unset_gives_a_few_fifos_a_mebibyte() {
    let max = read_proc_number("/proc/sys/fs/pipe-max-size");
    let soft_pages = read_proc_number("/proc/sys/fs/pipe-user-pages-soft");
    let size = max.min(MIB as u64);
    if soft_pages != 0 && 2 * size > soft_pages * 4096 / 4 {
        eprintln!("skipped: two FIFOs of {size} bytes exceed a quarter of the pipe budget");
        return;
    }
    let sb = Sandbox::new();
    let (launch, dir) = unprivileged(&sb, 47_103);
    let cfg = sb.write_config(&pairs_config(1, &format!("dir = \"{}\"", dir.display())));
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o644)).unwrap();
    let mut d = Daemon::start_with(sb, &launch);
    for name in ["in0", "out0"] {
        let f = open_reader(&dir.join(name));
        assert_eq!(pipe_capacity(&f) as u64, size, "{name}\n{}", d.log());
    }
    assert!(!d.log().contains(" WARN "), "{}", d.log());
    assert_pairs_relay(&dir, 1);
    d.stop_ok();
}

/// Without `pipe_size`, more FIFOs × 1 MiB than a quarter of an
/// unprivileged user's pipe budget: every FIFO keeps the kernel's size,
/// fifod says why (not as a warning: nothing was asked), and relays.
#[test]
fn pipe_size_unset_keeps_the_kernels_size_past_a_quarter_of_the_budget() {
    let soft_pages = read_proc_number("/proc/sys/fs/pipe-user-pages-soft");
    if soft_pages == 0 {
        eprintln!("skipped: fs.pipe-user-pages-soft is 0 (no budget)");
        return;
    }
    let size = read_proc_number("/proc/sys/fs/pipe-max-size").min(MIB as u64);
    let fifos = (soft_pages * 4096 / 4).div_ceil(size) as usize + 2;
    let pairs = fifos.div_ceil(2);
    let sb = Sandbox::new();
    let (launch, dir) = unprivileged(&sb, 47_104);
    let cfg = sb.write_config(&pairs_config(
        pairs,
        &format!("dir = \"{}\"", dir.display()),
    ));
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o644)).unwrap();
    let mut d = Daemon::start_with(sb, &launch);
    let log = d.log();
    assert!(
        log.lines().any(|l| l.contains(" INFO ")
            && l.contains("FIFOs keep the kernel's pipe size")
            && l.contains("fs.pipe-user-pages-soft")),
        "{log}"
    );
    assert!(!log.contains(" WARN "), "{log}");
    for i in [0, pairs - 1] {
        let f = open_reader(&dir.join(format!("out{i}")));
        assert!(
            (pipe_capacity(&f) as u64) < size,
            "out{i} got {} bytes\n{log}",
            pipe_capacity(&f)
        );
    }
    assert_pairs_relay(&dir, pairs);
    d.stop_ok();
}

/// Unprivileged, more slow sinks than a quarter of the user's pipe budget
/// holds in lane pipes: fifod says so once, holds the rest in memory, and
/// every byte arrives, in order.
#[test]
fn lanes_past_their_share_of_the_pipe_budget_hold_in_memory() {
    let soft_pages = read_proc_number("/proc/sys/fs/pipe-user-pages-soft");
    let lane_pipe = read_proc_number("/proc/sys/fs/pipe-max-size").min(MIB as u64);
    let pairs = (soft_pages * 4096 / 4).div_ceil(lane_pipe) as usize + 4;
    if soft_pages == 0 || pairs > 64 {
        eprintln!("skipped: the pipe budget ({soft_pages} pages) is none or too large to fill");
        return;
    }
    let sb = Sandbox::new();
    let (launch, dir) = unprivileged(&sb, 47_105);
    let cfg = sb.write_config(&pairs_config(
        pairs,
        &format!("dir = \"{}\"\npipe_size = \"64KiB\"", dir.display()),
    ));
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o644)).unwrap();
    let mut d = Daemon::start_with(sb, &launch);
    // Each output's pipe and its route's 1 MiB buffer: nothing waits in
    // the inputs, and no reader is there yet.
    let n = MIB + 64 * KIB;
    for i in 0..pairs {
        let w = open_writer(&dir.join(format!("in{i}")));
        crate::common::write_pattern(&w, 900 + i as u64, 0, n, Instant::now() + TIMEOUT);
    }
    wait_log(&d, "the lane pipe budget", TIMEOUT, |log| {
        log.contains("a quarter of this user's pipe budget (fs.pipe-user-pages-soft): further bytes are held in memory")
    });
    for i in 0..pairs {
        let r = open_reader(&dir.join(format!("out{i}")));
        if let Err(e) = Verifier::new(900 + i as u64, 0).check(&read_exact(&r, n, TIMEOUT)) {
            panic!("out{i}: {e}\n--- log ---\n{}", d.log());
        }
    }
    let log = d.log();
    assert_eq!(
        log.matches("further bytes are held in memory").count(),
        1,
        "{log}"
    );
    d.stop_ok();
}

// ---------------------------------------------------------------------------
// 8. A storm of SIGHUPs
// ---------------------------------------------------------------------------

/// 1,000 SIGHUPs with an unchanged config while 16 MiB flow through a
/// process: byte-exact at the output, the process never restarted, every
/// reload complete, and fifod answers after.
#[test]
fn a_thousand_sighups_while_data_flows_lose_nothing() {
    const LEN: usize = 16 * MIB;
    const SEED: u64 = 0x5106;
    const BURSTS: u64 = 100;
    const STEP: u64 = 64 * KIB as u64;
    let config = r#"
[fifo.in]
[fifo.out]

[process.relay]
command = ["cat"]

[[route]]
from = ["in"]
to = ["relay"]

[[route]]
from = ["relay"]
to = ["out"]
"#;
    let mut d = Daemon::start(config);
    let relay = started_pids(&d.log(), "relay");
    let w = open_writer(&d.fifo("in"));
    let writer = spawn(move || {
        crate::common::write_pattern(&w, SEED, 0, LEN, Instant::now() + BULK_TIMEOUT);
        w
    });
    let r = open_reader(&d.fifo("out"));
    let progress = Arc::new(AtomicU64::new(0));
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let reader = {
        let (progress, failure) = (progress.clone(), failure.clone());
        spawn(move || {
            let end = Instant::now() + BULK_TIMEOUT;
            let mut v = Verifier::new(SEED, 0);
            let mut buf = vec![0u8; 64 * KIB];
            while v.offset < LEN as u64 {
                let k = read_some(&r, &mut buf, end);
                if k == 0 {
                    *failure.lock().unwrap() = Some(format!("EOF at {}", v.offset));
                    break;
                }
                if let Err(e) = v.check(&buf[..k]) {
                    *failure.lock().unwrap() = Some(e);
                    break;
                }
                progress.store(v.offset, Ordering::SeqCst);
            }
            r
        })
    };
    let wait_read = |target: u64| {
        let ok = wait_until(TIMEOUT, || {
            failure.lock().unwrap().is_some() || progress.load(Ordering::SeqCst) >= target
        });
        if let Some(why) = failure.lock().unwrap().clone() {
            panic!("{why}\n--- log ---\n{}", d.log());
        }
        assert!(
            ok,
            "the reader got {} bytes and no more\n--- log ---\n{}",
            progress.load(Ordering::SeqCst),
            d.log()
        );
    };
    wait_read(MIB as u64);
    let pid = Pid::from_raw(d.pid() as i32);
    let start = progress.load(Ordering::SeqCst);
    for burst in 1..=BURSTS {
        for _ in 0..10 {
            kill(pid, Signal::SIGHUP).expect("SIGHUP");
        }
        // Bytes keep moving between the bursts.
        wait_read(start + burst * STEP);
    }
    // A last reload with a change tells when the storm is over.
    d.sb.write_config(&format!("{config}\n[fifo.marker]\n"));
    d.signal(Signal::SIGHUP);
    wait_log(&d, "the marker's reload", TIMEOUT, |log| {
        log.contains("reload: added fifo marker")
    });
    assert!(lstat(&d.fifo("marker")).is_some_and(|m| m.file_type().is_fifo()));
    let st = status_json(&d);
    assert_eq!(
        process_entry(&st, "relay")
            .get("pid")
            .and_then(|p| p.as_u64()),
        Some(relay[0] as u64),
        "{st}"
    );
    wait_read(LEN as u64);
    let r = reader.join(TIMEOUT);
    let w = writer.join(TIMEOUT);
    let log = d.log();
    let outcomes = reload_outcomes(&log);
    let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(failed.is_empty(), "failed reloads: {failed:?}");
    assert_eq!(started_pids(&log, "relay"), relay, "relay was restarted");
    eprintln!(
        "SIGHUP storm: {} signals, {} reloads",
        BURSTS * 10 + 1,
        outcomes.len()
    );
    drop(w);
    d.stop_ok();
    assert_no_more(&r, "out");
    let n = LEN as u64;
    for (route, sink) in [(0, "relay"), (1, "out")] {
        assert_clean_stats(&d, route, sink, n);
    }
}

/// A subdirectory a killed fifod made below its dir is adopted by the next
/// one, and removed at its clean stop like one it made.
#[test]
fn a_subdirectory_left_by_a_killed_fifod_is_adopted_and_removed_at_stop() {
    let shared = Sandbox::new();
    let config = format!(
        "[daemon]\ndir = \"{}\"\n[fifo.in]\npath = \"sub/in\"\n[fifo.out]\npath = \"sub/out\"\n\n\
         [[route]]\nfrom = [\"in\"]\nto = [\"out\"]\n",
        shared.run_dir().display()
    );
    let sub = shared.run_dir().join("sub");
    let mut first = Daemon::start(&config);
    assert!(lstat(&sub).is_some_and(|m| m.is_dir()));
    first.stop(Signal::SIGKILL);
    let mut second = Daemon::start(&config);
    relays(
        &sub.join("in"),
        &sub.join("out"),
        b"through the adopted directory\n",
    );
    second.stop_ok();
    assert!(
        lstat(&sub).is_none(),
        "{} stays after a clean stop\n--- log ---\n{}",
        sub.display(),
        second.log()
    );
}
