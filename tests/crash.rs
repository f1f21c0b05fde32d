//! Crash-only fifod: under a service manager with an fd store (the
//! stand-in of `common::manager`), fifod killed with SIGKILL at random
//! moments mid-stream and started again loses no byte, repeats none, and
//! nobody connected notices.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::PollFlags;

use crate::common::{
    BULK_TIMEOUT, Daemon, IN_OUT, KIB, MIB, Rng, Sandbox, StandIn, TIMEOUT, Verifier, fill_pattern,
    open_reader, open_writer, poll_one, read_exact, spawn, write_all,
};

/// How many times each stream is cut short.
const CRASHES: usize = 20;

/// How fifod is cut short mid-stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// SIGKILL, and a start by the stand-in manager with what it stored.
    Kill,
    /// `fifod upgrade`, without a service manager: the same process
    /// executes its binary again.
    Upgrade,
}

/// Starts fifod in `sb` for `cut`: under the stand-in manager for `Kill`.
fn start_for(cut: Cut, sb: Sandbox) -> (Option<StandIn>, Daemon) {
    match cut {
        Cut::Kill => {
            let mut manager = StandIn::new(&sb);
            let d = manager.start(sb);
            (Some(manager), d)
        }
        Cut::Upgrade => {
            let mut launch = crate::common::Launch::default();
            if let Some(level) = std::env::var_os("FIFOD_TEST_LOG") {
                launch.env.push(("RUST_LOG".into(), level));
            }
            (None, Daemon::start_with(sb, &launch))
        }
    }
}

/// Cuts fifod short once, as `cut` says, and returns it running again.
fn cut_short(cut: Cut, manager: &mut Option<StandIn>, d: Daemon) -> Daemon {
    match (cut, manager) {
        (Cut::Kill, Some(manager)) => {
            let processes = process_pids(&d);
            let d = manager.crash_and_restart(d);
            assert_eq!(
                process_pids(&d),
                processes,
                "a crash leaves the processes running, and they are adopted\n{}",
                all_logs(&d.sb)
            );
            d
        }
        _ => {
            let pid = d.pid();
            let processes = process_pids(&d);
            let out =
                d.sb.run_to_exit(&d.sb.cmd_args("upgrade"), &Default::default());
            assert!(
                out.status.success(),
                "fifod upgrade failed: {}{}\n{}",
                out.stdout,
                out.stderr,
                all_logs(&d.sb)
            );
            assert_eq!(d.pid(), pid, "an upgrade keeps the pid");
            assert_eq!(
                process_pids(&d),
                processes,
                "an upgrade keeps the processes running"
            );
            d
        }
    }
}

/// The pid of each process, by name, as `fifod status` says.
fn process_pids(d: &Daemon) -> Vec<(String, u64)> {
    let status = crate::common::status_json(d);
    status["processes"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or_default().to_string(),
                        p["pid"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// After a clean stop: the stand-in's store is empty.
fn assert_store_empty(manager: &mut Option<StandIn>) {
    if let Some(manager) = manager {
        assert_eq!(
            manager.names(),
            Vec::<String>::new(),
            "a clean stop leaves the fd store empty"
        );
    }
}

fn inode(path: &Path) -> u64 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .ino()
}

/// Reads `len` bytes of stream `seed`, checking each against the stream,
/// pausing now and then when `slow` (so that fifod holds bytes in lane
/// pipes); panics on EOF, a wrong byte or the deadline. `progress` says how
/// far it got.
fn read_stream(
    f: File,
    seed: u64,
    len: u64,
    slow: bool,
    progress: Arc<AtomicU64>,
) -> Result<(), String> {
    let end = Instant::now() + BULK_TIMEOUT;
    let mut v = Verifier::new(seed, 0);
    let mut buf = vec![0u8; 64 * KIB];
    let mut rng = Rng::new(seed);
    while v.offset < len {
        let want = buf.len().min((len - v.offset) as usize);
        let mut r = &f;
        match r.read(&mut buf[..want]) {
            Ok(0) => return Err(format!("EOF after {} of {len} bytes", v.offset)),
            Ok(n) => {
                let at = v.offset;
                if let Err(e) = v.check(&buf[..n]) {
                    // Where in the stream what was read comes from: how
                    // many bytes were lost (or, negative, repeated).
                    let window = 8 * MIB as u64;
                    let from = at.saturating_sub(window);
                    let stream = crate::common::pattern(seed, from, 2 * window as usize);
                    let probe = &buf[..n.min(64)];
                    let found = stream
                        .windows(probe.len())
                        .position(|w| w == probe)
                        .map(|p| p as i64 + from as i64 - at as i64);
                    return Err(format!(
                        "{e}; the {n} bytes read at {at} are the stream's {found:?} bytes on"
                    ));
                }
                progress.store(v.offset, Ordering::Relaxed);
                if slow && rng.between(0, 15) == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= end {
                    return Err(format!("read timed out after {} of {len} bytes", v.offset));
                }
                poll_one(&f, PollFlags::POLLIN, Duration::from_millis(200));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read after {} bytes: {e}", v.offset)),
        }
    }
    // Nothing more than the stream.
    let mut r = &f;
    match r.read(&mut buf) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Ok(n) => Err(format!("{n} bytes more than the {len} written")),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Checks the last fifod's accounting once every reader has everything:
/// for each sink of each route, what was produced since its start (bytes
/// taken back included) was delivered, none held or dropped.
fn assert_all_delivered(d: &Daemon) {
    let status = crate::common::status_of(&d.sb, true).stdout;
    let doc: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    for route in doc["routes"].as_array().expect("routes") {
        for sink in route["sinks"].as_array().expect("sinks") {
            let n = |key: &str| sink[key].as_u64().unwrap_or(u64::MAX);
            assert!(
                n("produced") == n("delivered") + n("held") + n("dropped")
                    && n("held") == 0
                    && n("dropped") == 0,
                "produced = delivered + held + dropped, nothing held or dropped:\n{status}"
            );
        }
    }
}

/// What every fifod started in `sb` logged, in order.
fn all_logs(sb: &Sandbox) -> String {
    let mut logs: Vec<(u64, String)> = std::fs::read_dir(sb.path(""))
        .map(|dir| {
            dir.filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let n = name
                    .strip_prefix("stderr-")?
                    .strip_suffix(".log")?
                    .parse()
                    .ok()?;
                Some((
                    n,
                    std::fs::read_to_string(sb.path(&name)).unwrap_or_default(),
                ))
            })
            .collect()
        })
        .unwrap_or_default();
    logs.sort();
    logs.iter()
        .map(|(n, text)| format!("--- stderr-{n}.log ---\n{text}"))
        .collect()
}

/// Writes `len` bytes of stream `seed` (a write that fails, EPIPE
/// included, panics).
fn write_stream(f: File, seed: u64, len: u64) {
    let end = Instant::now() + BULK_TIMEOUT;
    let mut buf = vec![0u8; 64 * KIB];
    let mut done = 0u64;
    let mut rng = Rng::new(seed ^ 0x5eed);
    while done < len {
        // Pieces of every size, so that kills land between and inside them.
        let n = rng.between(1, buf.len()).min((len - done) as usize);
        fill_pattern(seed, done, &mut buf[..n]);
        write_all(&f, &buf[..n], end);
        done += n as u64;
    }
}

/// Cuts fifod short `CRASHES` times (as `cut` says), each at a random
/// moment once `got` (how far the readers are, of `total`) has moved on a
/// little; `after` checks what each cut must leave as it was. Fails at once
/// when a reader reports a `failure`, or when the readers stall.
#[allow(clippy::too_many_arguments)]
fn cut_while_flowing(
    cut: Cut,
    manager: &mut Option<StandIn>,
    mut d: Daemon,
    seed: u64,
    total: u64,
    got: impl Fn() -> u64,
    failure: &Mutex<Option<String>>,
    mut after: impl FnMut(usize),
) -> Daemon {
    let mut rng = Rng::new(seed);
    let step = (total / (2 * CRASHES as u64)).max(1);
    for crash in 0..CRASHES {
        // A random moment mid-stream: once the readers got a little further.
        let at = got() + rng.between(1, step as usize) as u64;
        let end = Instant::now() + BULK_TIMEOUT;
        while got() < at.min(total - 1) {
            if let Some(e) = failure.lock().unwrap().take() {
                panic!("crash {crash}: {e}\n{}", all_logs(&d.sb));
            }
            assert!(
                Instant::now() < end,
                "crash {crash}: the readers stalled at {} of {total}\n{}\n{}",
                got(),
                all_logs(&d.sb),
                crate::common::status_of(&d.sb, true).stdout
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        d = cut_short(cut, manager, d);
        after(crash);
    }
    d
}

/// Once the writers are done: every reader got everything, the last
/// fifod's accounting balances, and a clean stop empties the store.
fn finish(
    mut d: Daemon,
    manager: &mut Option<StandIn>,
    writers: Vec<crate::common::Joiner<()>>,
    readers: Vec<crate::common::Joiner<Result<(), String>>>,
) {
    for writer in writers {
        writer.join(BULK_TIMEOUT);
    }
    for reader in readers {
        if let Err(e) = reader.join(BULK_TIMEOUT) {
            panic!(
                "{e}\n{}\n{}",
                all_logs(&d.sb),
                crate::common::status_of(&d.sb, true).stdout
            );
        }
    }
    assert_all_delivered(&d);
    d.stop_ok();
    assert_store_empty(manager);
}

/// A 1→3 fan-out: every output gets the whole stream.
const FAN_OUT: &str = r#"
[fifo.in]
[fifo.a]
[fifo.b]
[fifo.c]

[[route]]
from = ["in"]
to = ["a", "b", "c"]
"#;

/// One stream written into `in` and read from each of `outputs`, fifod
/// killed `CRASHES` times while it flows; every reader gets exactly the
/// stream, the writer never an error, the FIFOs stay the same nodes, and a
/// clean stop empties the store.
fn stream_survives_crashes(
    cut: Cut,
    config: &str,
    outputs: &[&str],
    len: u64,
    slow: bool,
    seed: u64,
) {
    let sb = Sandbox::new();
    sb.write_config(config);
    let (mut manager, d) = start_for(cut, sb);
    let fifos: Vec<_> = std::iter::once("in")
        .chain(outputs.iter().copied())
        .map(|name| d.fifo(name))
        .collect();
    let nodes: Vec<u64> = fifos.iter().map(|p| inode(p)).collect();

    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let mut progress = Vec::new();
    let mut readers = Vec::new();
    for (i, output) in fifos[1..].iter().enumerate() {
        let f = open_reader(output);
        let done = Arc::new(AtomicU64::new(0));
        progress.push(Arc::clone(&done));
        let failure = Arc::clone(&failure);
        let name = outputs[i].to_string();
        // Only the first reader is slow: the others run ahead of it.
        let slow = slow && i == 0;
        readers.push(spawn(move || {
            let outcome =
                read_stream(f, seed, len, slow, done).map_err(|e| format!("reader of {name}: {e}"));
            if let Err(e) = &outcome {
                *failure.lock().unwrap() = Some(e.clone());
            }
            outcome
        }));
    }
    let writer = {
        let f = open_writer(&fifos[0]);
        spawn(move || write_stream(f, seed, len))
    };
    // How far the slowest reader got.
    let got = || {
        progress
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .min()
            .unwrap_or(len)
    };

    let d = cut_while_flowing(cut, &mut manager, d, seed, len, got, &failure, |crash| {
        let now: Vec<u64> = fifos.iter().map(|p| inode(p)).collect();
        assert_eq!(
            now, nodes,
            "crash {crash}: the FIFOs are not the same nodes"
        );
    });
    finish(d, &mut manager, vec![writer], readers);
    for fifo in &fifos {
        assert!(!fifo.exists(), "a clean stop removes {}", fifo.display());
    }
}

#[test]
fn a_byte_stream_loses_nothing_when_fifod_is_killed() {
    stream_survives_crashes(Cut::Kill, IN_OUT, &["out"], 256 * MIB as u64, false, 1);
}

#[test]
fn bytes_held_for_a_slow_reader_survive_a_kill() {
    stream_survives_crashes(Cut::Kill, IN_OUT, &["out"], 16 * MIB as u64, true, 2);
}

#[test]
fn a_fanned_out_stream_loses_and_repeats_nothing_when_fifod_is_killed() {
    stream_survives_crashes(
        Cut::Kill,
        FAN_OUT,
        &["a", "b", "c"],
        64 * MIB as u64,
        false,
        3,
    );
}

#[test]
fn a_fan_out_to_a_slow_reader_survives_kills() {
    stream_survives_crashes(
        Cut::Kill,
        FAN_OUT,
        &["a", "b", "c"],
        16 * MIB as u64,
        true,
        4,
    );
}

/// A route through a process: `in` → `cat` → `out`.
const THROUGH_A_PROCESS: &str = r#"
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

#[test]
fn a_stream_through_a_process_loses_nothing_when_fifod_is_killed() {
    stream_survives_crashes(
        Cut::Kill,
        THROUGH_A_PROCESS,
        &["out"],
        64 * MIB as u64,
        false,
        9,
    );
}

#[test]
fn a_stream_through_a_process_loses_nothing_through_upgrades() {
    stream_survives_crashes(
        Cut::Upgrade,
        THROUGH_A_PROCESS,
        &["out"],
        64 * MIB as u64,
        false,
        8,
    );
}

#[test]
fn a_byte_stream_loses_nothing_through_upgrades() {
    stream_survives_crashes(Cut::Upgrade, IN_OUT, &["out"], 256 * MIB as u64, false, 6);
}

#[test]
fn a_fan_out_to_a_slow_reader_loses_and_repeats_nothing_through_upgrades() {
    stream_survives_crashes(
        Cut::Upgrade,
        FAN_OUT,
        &["a", "b", "c"],
        16 * MIB as u64,
        true,
        7,
    );
}

/// What fifod stores: each FIFO's fd, under names of its own, and nothing
/// after a clean stop; without `FDSTORE`, nothing at all.
#[test]
fn fifod_stores_its_fifos_and_takes_them_out_at_stop() {
    let sb = Sandbox::new();
    sb.write_config(IN_OUT);
    let mut manager = StandIn::new(&sb);
    let mut d = manager.start(sb);
    let mut names = manager.names();
    names.sort();
    assert_eq!(names, ["fifod/fifo/in", "fifod/fifo/out"]);
    d.stop_ok();
    assert_eq!(manager.names(), Vec::<String>::new());

    let sb = Sandbox::new();
    sb.write_config(IN_OUT);
    let mut manager = StandIn::new(&sb);
    let mut launch = manager.launch();
    launch.env.retain(|(k, _)| k != "FDSTORE");
    let mut d = Daemon::start_with(sb, &launch);
    assert_eq!(
        manager.names(),
        Vec::<String>::new(),
        "no FDSTORE, no store"
    );
    d.stop_ok();
    let _ = TIMEOUT;
}

/// Four writers into one line route, lines of every length up to 12 KiB.
const FAN_IN_LINES: &str = r#"
[fifo.w0]
[fifo.w1]
[fifo.w2]
[fifo.w3]
[fifo.out]

[[route]]
from = ["w0", "w1", "w2", "w3"]
to = ["out"]
framing = "lines"
"#;

/// Line `seq` of writer `w`: its name, its number, and letters of a length
/// and kind that both give (so that the reader can check every byte).
fn line_of(w: usize, seq: u64) -> Vec<u8> {
    let mut rng = Rng::new((w as u64) << 32 | seq);
    // Mostly short, now and then long: a run meets lines of every size.
    let len = match rng.between(0, 9) {
        0 => rng.between(4 * KIB, 12 * KIB),
        1 => 0,
        _ => rng.between(1, 200),
    };
    let mut line = format!("w{w} {seq} ").into_bytes();
    line.extend((0..len).map(|_| b'a' + rng.between(0, 25) as u8));
    line.push(b'\n');
    line
}

/// `FAN_IN_LINES` with `lines` lines from each writer, fifod killed
/// `CRASHES` times while they flow: the reader gets every line once,
/// whole, each writer's in order.
#[test]
fn a_line_route_gives_every_line_once_and_whole_when_fifod_is_killed() {
    lines_survive(Cut::Kill);
}

#[test]
fn a_line_route_gives_every_line_once_and_whole_through_upgrades() {
    lines_survive(Cut::Upgrade);
}

fn lines_survive(cut: Cut) {
    const WRITERS: usize = 4;
    const LINES: u64 = 12_000;
    let sb = Sandbox::new();
    sb.write_config(FAN_IN_LINES);
    let (mut manager, d) = start_for(cut, sb);
    let output = d.fifo("out");
    let got = Arc::new(AtomicU64::new(0));
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let reader = {
        let f = open_reader(&output);
        let (got, failure) = (Arc::clone(&got), Arc::clone(&failure));
        spawn(move || {
            let outcome = read_lines(f, WRITERS, LINES, &got);
            if let Err(e) = &outcome {
                *failure.lock().unwrap() = Some(e.clone());
            }
            outcome
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let f = open_writer(&d.fifo(&format!("w{w}")));
            spawn(move || {
                let end = Instant::now() + BULK_TIMEOUT;
                let mut rng = Rng::new(w as u64);
                let mut pending = Vec::new();
                for seq in 0..LINES {
                    pending.extend(line_of(w, seq));
                    // Writes of every size, cutting lines anywhere.
                    if pending.len() >= rng.between(1, 16 * KIB) || seq == LINES - 1 {
                        let mut at = 0;
                        while at < pending.len() {
                            let n = rng.between(1, 8 * KIB).min(pending.len() - at);
                            write_all(&f, &pending[at..at + n], end);
                            at += n;
                        }
                        pending.clear();
                    }
                }
            })
        })
        .collect();

    let total = WRITERS as u64 * LINES;
    let progress = || got.load(Ordering::Relaxed);
    let d = cut_while_flowing(cut, &mut manager, d, 5, total, progress, &failure, |_| {});
    finish(d, &mut manager, writers, vec![reader]);
}

/// Reads lines until each of `writers` gave `lines`, checking each line
/// against `line_of` and each writer's order; `got` counts lines.
fn read_lines(f: File, writers: usize, lines: u64, got: &AtomicU64) -> Result<(), String> {
    let end = Instant::now() + BULK_TIMEOUT;
    let mut next = vec![0u64; writers];
    let mut buf = vec![0u8; 64 * KIB];
    let mut partial = Vec::new();
    let mut count = 0u64;
    while next.iter().any(|&n| n < lines) {
        let mut r = &f;
        match r.read(&mut buf) {
            Ok(0) => return Err(format!("EOF after {count} lines")),
            Ok(n) => {
                partial.extend_from_slice(&buf[..n]);
                let mut start = 0;
                while let Some(i) = partial[start..].iter().position(|&b| b == b'\n') {
                    let line = &partial[start..start + i + 1];
                    start += i + 1;
                    let text = String::from_utf8_lossy(line);
                    let mut fields = text.splitn(3, ' ');
                    let w: usize = fields
                        .next()
                        .and_then(|w| w.strip_prefix('w'))
                        .and_then(|w| w.parse().ok())
                        .filter(|&w| w < writers)
                        .ok_or_else(|| format!("line {count} is not a writer's: {text:.80}"))?;
                    let seq = next[w];
                    if line != line_of(w, seq).as_slice() {
                        let want = line_of(w, seq);
                        let same = want.iter().zip(line).take_while(|(a, b)| a == b).count();
                        return Err(format!(
                            "line {count} should be w{w}'s line {seq} ({} bytes), it has {} \
                             bytes, the first {same} right: {text:.80}",
                            want.len(),
                            line.len()
                        ));
                    }
                    next[w] += 1;
                    count += 1;
                    got.store(count, Ordering::Relaxed);
                }
                partial.drain(..start);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= end {
                    return Err(format!("read timed out after {count} lines ({next:?})"));
                }
                poll_one(&f, PollFlags::POLLIN, Duration::from_millis(200));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read after {count} lines: {e}")),
        }
    }
    if !partial.is_empty() {
        return Err(format!("{} bytes after the last line", partial.len()));
    }
    Ok(())
}

/// An upgrade whose new binary would refuse the config on disk is not
/// made: fifod goes on as it was, and says why.
#[test]
fn an_upgrade_to_a_config_the_binary_refuses_leaves_fifod_as_it_was() {
    let sb = Sandbox::new();
    sb.write_config(IN_OUT);
    let d = Daemon::start_with(sb, &Default::default());
    let pid = d.pid();
    d.sb.write_config("[fifo.in]\nmode = \"999\"\n");
    let out =
        d.sb.run_to_exit(&d.sb.cmd_args("upgrade"), &Default::default());
    assert_eq!(out.status.code(), Some(1), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("refuses the config") && out.stderr.contains("invalid mode"),
        "{}",
        out.stderr
    );
    let status = crate::common::status_json(&d);
    assert_eq!(status["upgrades"], 0);
    assert_eq!(status["upgrade_failures"], 1);
    assert_eq!(d.pid(), pid);
    // Still relaying.
    let reader = open_reader(&d.fifo("out"));
    let writer = open_writer(&d.fifo("in"));
    write_all(&writer, b"still here\n", Instant::now() + TIMEOUT);
    let got = read_exact(&reader, 11, TIMEOUT);
    assert_eq!(got, b"still here\n");
}

/// Under a store, a line longer than a lane's pipe can take whole goes on
/// all the same (through memory), and the lines after it too.
#[test]
fn a_line_too_long_for_a_lane_pipe_is_not_stuck() {
    let sb = Sandbox::new();
    sb.write_config(
        r#"
[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
framing = "lines"
buffer = "64KiB"
"#,
    );
    let mut manager = StandIn::new(&sb);
    let d = manager.start(sb);
    let reader = open_reader(&d.fifo("out"));
    let writer = open_writer(&d.fifo("in"));
    // Longer than max_line (the buffer, 64 KiB), whose pieces are as
    // large as a 64 KiB pipe, less what fifod keeps aside in it.
    let mut lines = vec![b'x'; 100 * KIB];
    lines.push(b'\n');
    lines.extend_from_slice(b"short\n");
    write_all(&writer, &lines, Instant::now() + TIMEOUT);
    let got = read_exact(&reader, lines.len(), TIMEOUT);
    assert!(got == lines, "the lines came changed");
}

/// A process the config no longer has when fifod upgrades is stopped by
/// the new image, and one it still has runs on.
#[test]
fn an_upgrade_stops_a_process_the_config_dropped_and_keeps_the_others() {
    let with = |both: bool| {
        let mut config = String::from(
            "[fifo.in]\n[process.kept]\ncommand = [\"sleep\", \"1000\"]\n\
             [[route]]\nfrom = [\"in\"]\nto = [\"kept\"]\n",
        );
        if both {
            config.push_str("[process.dropped]\ncommand = [\"sleep\", \"1000\"]\n");
        }
        config
    };
    let sb = Sandbox::new();
    sb.write_config(&with(true));
    let d = Daemon::start_with(sb, &Default::default());
    let before = process_pids(&d);
    let pid_of = |pids: &[(String, u64)], name: &str| {
        pids.iter()
            .find(|(n, _)| n == name)
            .map(|&(_, pid)| pid)
            .unwrap_or_else(|| panic!("no process {name} in {pids:?}"))
    };
    let (kept, dropped) = (pid_of(&before, "kept"), pid_of(&before, "dropped"));
    d.sb.write_config(&with(false));
    let out =
        d.sb.run_to_exit(&d.sb.cmd_args("upgrade"), &Default::default());
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    let after = process_pids(&d);
    assert_eq!(after, vec![("kept".to_string(), kept)], "{after:?}");
    let gone =
        crate::common::wait_until(TIMEOUT, || !Path::new(&format!("/proc/{dropped}")).exists());
    assert!(
        gone,
        "the dropped process (pid {dropped}) still runs\n{}",
        d.log()
    );
}
