//! Reloading the config on SIGHUP while bytes flow: FIFOs and processes come
//! and go, modes change in place, held bytes and lines in progress carry
//! over, an invalid file changes nothing, and a removed output keeps its
//! path until its reader has what fifod held for it.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::{
    BULK_TIMEOUT, Daemon, IN_OUT, Joiner, KIB, Launch, MIB, Sandbox, TIMEOUT, Verifier,
    assert_clean_stats, assert_no_more, fifo_entry, fifo_node, gone_or_zombie, lstat, num,
    open_reader, open_writer, parse_stats, pattern_block, pipe_pending, process_entry, read_exact,
    read_some, relays, reload_outcomes, sink_entry, spawn, status_json, status_until, text,
    wait_log, wait_until, write_all, write_pattern,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// `(st_ino, permission bits)` of a FIFO; panics if it is not one.
fn node(path: &Path) -> (u64, u32) {
    let n = fifo_node(path);
    (n.ino, n.mode)
}

/// Waits (deadline) until `path` no longer exists.
fn wait_gone(d: &Daemon, path: &Path) {
    assert!(
        wait_until(TIMEOUT, || lstat(path).is_none()),
        "{} still exists\n--- log ---\n{}",
        path.display(),
        d.log()
    );
}

/// The pid `fifod status` reports for process `name` (which must run).
fn running_pid(d: &Daemon, name: &str) -> i32 {
    let st = status_json(d);
    let p = process_entry(&st, name);
    assert_eq!(text(p, "state"), "running", "{p}\n--- log ---\n{}", d.log());
    i32::try_from(num(p, "pid")).expect("a pid")
}

/// Waits until fifod reaped `pid`, which a reload stopped.
fn wait_replaced(d: &Daemon, name: &str, pid: i32) {
    let needle = format!("process {name} (pid {pid}, replaced by a reload)");
    wait_log(d, &needle, TIMEOUT, |log| log.contains(&needle));
    assert!(gone_or_zombie(pid), "pid {pid} still runs");
}

/// Writes `len` bytes of stream `seed` from `offset` into `input` while
/// `output` has no reader, and waits until fifod has all of them: in the
/// output's pipe, or held for it by route `route` (some must be held).
fn hold(d: &Daemon, input: &str, output: &str, route: usize, seed: u64, offset: u64, len: usize) {
    let w = open_writer(&d.fifo(input));
    write_pattern(&w, seed, offset, len, Instant::now() + TIMEOUT);
    status_until(
        d,
        &format!("fifod holding the {len} bytes for {output}"),
        |st| {
            let queued = num(fifo_entry(st, output), "queued");
            let held = num(sink_entry(st, route, output), "held");
            num(fifo_entry(st, input), "queued") == 0 && held > 0 && queued + held == len as u64
        },
    );
}

/// Reads exactly `len` bytes of stream `seed` from `offset` on `r`.
fn read_verified(d: &Daemon, r: &File, seed: u64, offset: u64, len: usize) {
    let got = read_exact(r, len, TIMEOUT);
    let mut v = Verifier::new(seed, offset);
    if let Err(e) = v.check(&got) {
        panic!("{e}\n--- log ---\n{}", d.log());
    }
}

/// Asserts that `r` has nothing more once fifod is idle with `inputs`
/// empty: no byte doubled or invented.
fn assert_nothing_more(d: &Daemon, r: &File, inputs: &[&File]) {
    d.wait_idle(inputs);
    assert_eq!(pipe_pending(r), 0, "bytes beyond the stream");
}

/// How far a reader thread got (in bytes or lines), or why it gave up.
#[derive(Debug, Default)]
struct Progress {
    done: AtomicU64,
    failure: Mutex<Option<String>>,
}

impl Progress {
    fn set(&self, done: u64) {
        self.done.store(done, Ordering::SeqCst);
    }

    /// Records how the reader ended.
    fn end<T>(&self, result: Result<T, String>) -> Result<T, String> {
        if let Err(why) = &result {
            *self.failure.lock().expect("lock") = Some(why.clone());
        }
        result
    }

    /// Waits until the reader got `target` (bytes or lines); panics at once
    /// if it gave up, or once it got nothing more for `TIMEOUT`.
    fn wait_for(&self, d: &Daemon, target: u64, unit: &str) {
        let mut last = self.done.load(Ordering::SeqCst);
        let mut since = Instant::now();
        loop {
            if let Some(why) = self.failure.lock().expect("lock").clone() {
                panic!("{why}\n--- log ---\n{}", d.log());
            }
            let done = self.done.load(Ordering::SeqCst);
            if done >= target {
                return;
            }
            if done != last {
                (last, since) = (done, Instant::now());
            }
            assert!(
                since.elapsed() < TIMEOUT,
                "the reader got no more than {done} {unit} (waiting for {target})\n--- log ---\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A writer streaming `segments` parts of stream `seed` into an input, each
/// part only once the test allows it, and a reader checking every byte on
/// an output, counting what it verified.
#[derive(Debug)]
struct Flow {
    allowed: Arc<AtomicUsize>,
    read: Arc<Progress>,
    segment: usize,
    segments: usize,
    writer: Joiner<File>,
    reader: Joiner<(Result<u64, String>, File)>,
}

impl Flow {
    /// Starts the two threads; the writer may write the first part.
    fn start(
        d: &Daemon,
        input: &str,
        output: &str,
        seed: u64,
        len: usize,
        segments: usize,
    ) -> Flow {
        let segment = len / segments;
        assert_eq!(
            segment * segments,
            len,
            "{len} bytes in {segments} equal parts"
        );
        let allowed = Arc::new(AtomicUsize::new(1));
        let read = Arc::new(Progress::default());
        let r = open_reader(&d.fifo(output));
        let progress = Arc::clone(&read);
        let reader = spawn(move || {
            let end = Instant::now() + BULK_TIMEOUT;
            let mut v = Verifier::new(seed, 0);
            let mut buf = vec![0u8; 256 * KIB];
            let result = loop {
                if v.offset == len as u64 {
                    break Ok(v.offset);
                }
                let want = buf.len().min(len - v.offset as usize);
                let k = read_some(&r, &mut buf[..want], end);
                if k == 0 {
                    break Err(format!("EOF after {} bytes", v.offset));
                }
                if let Err(e) = v.check(&buf[..k]) {
                    break Err(e);
                }
                progress.set(v.offset);
            };
            (progress.end(result), r)
        });
        let w = open_writer(&d.fifo(input));
        let gate = Arc::clone(&allowed);
        let writer = spawn(move || {
            let end = Instant::now() + BULK_TIMEOUT;
            for part in 0..segments {
                assert!(
                    wait_until(BULK_TIMEOUT, || gate.load(Ordering::SeqCst) > part),
                    "part {part} never allowed"
                );
                let offset = (part * segment) as u64;
                write_pattern(&w, seed, offset, segment, end);
            }
            w
        });
        Flow {
            allowed,
            read,
            segment,
            segments,
            writer,
            reader,
        }
    }

    /// Lets the writer write parts up to `parts` (exclusive).
    fn allow(&self, parts: usize) {
        self.allowed.fetch_max(parts, Ordering::SeqCst);
    }

    /// Waits until the reader is in the middle of part `part`: the writer
    /// is then still writing it, and bytes are in flight everywhere.
    fn wait_mid(&self, d: &Daemon, part: usize) {
        self.wait_read(d, (part * self.segment + self.segment / 2) as u64);
    }

    /// Waits until the reader verified `target` bytes.
    fn wait_read(&self, d: &Daemon, target: u64) {
        self.read.wait_for(d, target, "bytes");
    }

    /// Lets the rest go, and returns both ends once the reader verified
    /// the whole stream.
    fn finish(self, d: &Daemon) -> (File, File) {
        self.allow(self.segments);
        self.wait_read(d, (self.segment * self.segments) as u64);
        let w = self.writer.join(BULK_TIMEOUT);
        let (result, r) = self.reader.join(BULK_TIMEOUT);
        match result {
            Ok(n) => assert_eq!(n, (self.segment * self.segments) as u64),
            Err(e) => panic!("{e}\n--- log ---\n{}", d.log()),
        }
        (w, r)
    }
}

// ---------------------------------------------------------------------------
// 64 MiB through reloads that change everything around the route
// ---------------------------------------------------------------------------

/// One config of the big test; the route from `in` to the FIFO at `out` is
/// the same in all, whatever that FIFO's name.
#[derive(Debug, Clone, Copy)]
struct Around {
    in_mode: &'static str,
    out_name: &'static str,
    out_mode: &'static str,
    extra: bool,
    p1: &'static str,
    p2: bool,
    tap: bool,
}

impl Around {
    fn toml(self) -> String {
        let mut t = format!(
            r#"
[daemon]
shutdown_timeout = "30s"

[fifo.in]
mode = "{}"

[fifo.{out}]
path = "out"
mode = "{}"

[process.p1]
command = ["sleep", "{}"]

[[route]]
from = ["in"]
to = ["{out}"]
"#,
            self.in_mode,
            self.out_mode,
            self.p1,
            out = self.out_name,
        );
        if self.extra {
            t.push_str("\n[fifo.extra]\n");
        }
        if self.p2 {
            t.push_str("\n[process.p2]\ncommand = [\"sleep\", \"3600\"]\n");
        }
        if self.tap {
            t.push_str(
                r#"
[fifo.tap]

[[route]]
from = ["in"]
to = ["tap"]
when_full = "drop-newest"
buffer = "64KiB"
"#,
            );
        }
        t
    }
}

#[test]
fn sixty_four_mib_stay_byte_exact_through_reloads_around_their_route() {
    const SEED: u64 = 0x5eed_0064;
    const LEN: usize = 64 * MIB;
    const PARTS: usize = 8;
    let mut cfg = Around {
        in_mode: "0600",
        out_name: "out",
        out_mode: "0600",
        extra: false,
        p1: "3600",
        p2: false,
        tap: false,
    };
    let mut d = Daemon::start(&cfg.toml());
    let (in_ino, _) = node(&d.fifo("in"));
    let (out_ino, _) = node(&d.fifo("out"));
    let p1 = running_pid(&d, "p1");
    let flow = Flow::start(&d, "in", "out", SEED, LEN, PARTS);
    let same_nodes = |d: &Daemon| {
        assert_eq!(node(&d.fifo("in")).0, in_ino, "in is another node");
        assert_eq!(node(&d.fifo("out")).0, out_ino, "out is another node");
    };

    // 1: a FIFO and a process are added.
    flow.wait_mid(&d, 0);
    cfg.extra = true;
    cfg.p2 = true;
    d.reload_ok(&cfg.toml());
    node(&d.fifo("extra"));
    let p2 = running_pid(&d, "p2");
    assert_eq!(
        running_pid(&d, "p1"),
        p1,
        "p1 did not change: it keeps running"
    );
    same_nodes(&d);
    flow.allow(2);

    // 2: modes change in place.
    flow.wait_mid(&d, 1);
    cfg.in_mode = "0620";
    cfg.out_mode = "0640";
    d.reload_ok(&cfg.toml());
    assert_eq!(node(&d.fifo("in")), (in_ino, 0o620));
    assert_eq!(node(&d.fifo("out")), (out_ino, 0o640));
    let log = d.log();
    assert!(log.contains("reload: fifo in: mode 0600 -> 0620"), "{log}");
    flow.allow(3);

    // 3: a process's command changes: it is replaced.
    flow.wait_mid(&d, 2);
    cfg.p1 = "3601";
    d.reload_ok(&cfg.toml());
    let new_p1 = running_pid(&d, "p1");
    assert_ne!(new_p1, p1, "p1 was not restarted");
    wait_replaced(&d, "p1", p1);
    assert_eq!(running_pid(&d, "p2"), p2);
    same_nodes(&d);
    flow.allow(4);

    // 4: a second route from the same input, to an output nobody reads.
    flow.wait_mid(&d, 3);
    cfg.tap = true;
    d.reload_ok(&cfg.toml());
    node(&d.fifo("tap"));
    same_nodes(&d);
    flow.allow(5);

    // 5: the FIFO, the process and the second route go. `extra` held
    // nothing and goes at once; `tap` stays until its reader has its bytes
    // (the writer waits meanwhile, still in the middle of part 4).
    flow.wait_mid(&d, 4);
    cfg.extra = false;
    cfg.p2 = false;
    cfg.tap = false;
    d.reload_ok(&cfg.toml());
    assert!(lstat(&d.fifo("extra")).is_none(), "extra is still there");
    wait_replaced(&d, "p2", p2);
    assert_eq!(running_pid(&d, "p1"), new_p1);
    same_nodes(&d);
    let tap = d.fifo("tap");
    assert!(lstat(&tap).is_some(), "tap went with bytes held for it");
    let r = open_reader(&tap);
    let mut got = 0;
    let mut buf = vec![0u8; 64 * KIB];
    let drained = wait_until(TIMEOUT, || {
        loop {
            match (&r).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("read tap: {e}"),
            }
        }
        lstat(&tap).is_none()
    });
    assert!(drained, "tap never went\n--- log ---\n{}", d.log());
    assert!(got > 64 * KIB, "tap gave only {got} bytes");
    flow.allow(6);

    // 6: the output is renamed: the same path, so the same FIFO and route.
    flow.wait_mid(&d, 5);
    cfg.out_name = "dest";
    d.reload_ok(&cfg.toml());
    same_nodes(&d);
    flow.allow(7);

    let (w, r) = flow.finish(&d);
    assert_nothing_more(&d, &r, &[&w]);
    let outcomes = reload_outcomes(&d.log());
    assert_eq!(outcomes, vec![Ok(()); 6]);
    d.stop_ok();
    assert_clean_stats(&d, 0, "dest", LEN as u64);
}

// ---------------------------------------------------------------------------
// Held bytes
// ---------------------------------------------------------------------------

const HELD: &str = r#"
[daemon]
# 100 KiB is more than a 64 KiB pipe holds: fifod holds the rest
pipe_size = "64KiB"

[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
buffer = "1MiB"
"#;

#[test]
fn bytes_held_for_an_output_survive_an_unrelated_reload() {
    const SEED: u64 = 0xb0b;
    let mut d = Daemon::start(HELD);
    hold(&d, "in", "out", 0, SEED, 0, 100 * KIB);
    d.reload_ok(&format!("{HELD}\n[fifo.extra]\n"));
    node(&d.fifo("extra"));
    let r = open_reader(&d.fifo("out"));
    read_verified(&d, &r, SEED, 0, 100 * KIB);
    let w = open_writer(&d.fifo("in"));
    assert_nothing_more(&d, &r, &[&w]);
    d.stop_ok();
    assert_clean_stats(&d, 0, "out", 100 * KIB as u64);
}

#[test]
fn bytes_held_by_a_route_that_changed_go_to_the_same_output() {
    const SEED: u64 = 0xc4a;
    let d = Daemon::start(HELD);
    hold(&d, "in", "out", 0, SEED, 0, 100 * KIB);
    // The route gets a second source: a route of its own, new.
    d.reload_ok(
        r#"
[daemon]
pipe_size = "64KiB"

[fifo.in]
[fifo.in2]
[fifo.out]

[[route]]
from = ["in", "in2"]
to = ["out"]
buffer = "1MiB"
"#,
    );
    let r = open_reader(&d.fifo("out"));
    read_verified(&d, &r, SEED, 0, 100 * KIB);
    // Both sources flow into it.
    let w = open_writer(&d.fifo("in2"));
    write_all(&w, b"from in2\n", Instant::now() + TIMEOUT);
    assert_eq!(read_exact(&r, 9, TIMEOUT), b"from in2\n");
    let w1 = open_writer(&d.fifo("in"));
    write_pattern(&w1, SEED, 100 * KIB as u64, KIB, Instant::now() + TIMEOUT);
    read_verified(&d, &r, SEED, 100 * KIB as u64, KIB);
    assert_nothing_more(&d, &r, &[&w, &w1]);
}

#[test]
fn a_removed_output_keeps_its_path_until_its_reader_has_the_held_bytes() {
    const SEED: u64 = 0xdead;
    let config = r#"
[daemon]
shutdown_timeout = "60s"
# 100 KiB is more than a 64 KiB pipe holds: fifod holds the rest
pipe_size = "64KiB"

[fifo.in]
[fifo.in2]
[fifo.out]
[fifo.idle]

[[route]]
from = ["in"]
to = ["out"]

[[route]]
from = ["in2"]
to = ["idle"]
"#;
    let mut d = Daemon::start(config);
    hold(&d, "in", "out", 0, SEED, 0, 100 * KIB);
    // Both outputs go; the inputs stay, in no route.
    d.reload_ok(
        "[daemon]\nshutdown_timeout = \"60s\"\npipe_size = \"64KiB\"\n\n[fifo.in]\n[fifo.in2]\n",
    );
    assert!(
        lstat(&d.fifo("idle")).is_none(),
        "idle held nothing: it goes at once"
    );
    let out = d.fifo("out");
    assert!(lstat(&out).is_some(), "out went with bytes held for it");
    let log = d.log();
    assert!(
        log.contains("fifo out: removed from the config; its path stays until its reader"),
        "{log}"
    );
    let r = open_reader(&out);
    read_verified(&d, &r, SEED, 0, 100 * KIB);
    wait_gone(&d, &out);
    wait_log(&d, "out's retirement", TIMEOUT, |log| {
        log.contains("fifo out: its reader has everything")
    });
    // fifod closed it: the reader sees its end, and nothing more.
    assert_no_more(&r, "out");
    d.stop_ok();
    let log = d.log();
    assert!(!log.contains("fifo out: removed with"), "{log}");
}

#[test]
fn an_output_added_back_while_it_retires_keeps_its_order_and_its_path() {
    const SEED: u64 = 0x77;
    let config = r#"
[daemon]
shutdown_timeout = "60s"
# 100 KiB is more than a 64 KiB pipe holds: fifod holds the rest
pipe_size = "64KiB"

[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
"#;
    let mut d = Daemon::start(config);
    hold(&d, "in", "out", 0, SEED, 0, 100 * KIB);
    let (ino, _) = node(&d.fifo("out"));
    // `out` goes, with bytes held for it, and comes back before a reader.
    d.reload_ok("[daemon]\nshutdown_timeout = \"60s\"\npipe_size = \"64KiB\"\n\n[fifo.in]\n");
    d.reload_ok(config);
    let r = open_reader(&d.fifo("out"));
    let w = open_writer(&d.fifo("in"));
    write_pattern(&w, SEED, 100 * KIB as u64, KIB, Instant::now() + TIMEOUT);
    read_verified(&d, &r, SEED, 0, 101 * KIB);
    write_pattern(&w, SEED, 101 * KIB as u64, KIB, Instant::now() + TIMEOUT);
    read_verified(&d, &r, SEED, 101 * KIB as u64, KIB);
    assert_nothing_more(&d, &r, &[&w]);
    assert_eq!(node(&d.fifo("out")).0, ino, "out is another node");
    let log = d.log();
    assert!(!log.contains("removed fifo out at"), "{log}");
    // What it got back counts as accepted there: the counts add up.
    d.stop_ok();
    let stats = parse_stats(&d.log(), 0, "out");
    assert_eq!(stats.undelivered, 0);
}

#[test]
fn a_removed_input_is_read_one_last_time() {
    const A: u64 = 0xa;
    const B: u64 = 0xb;
    let d = Daemon::start(
        r#"
[daemon]
# the sizes below count on 64 KiB pipes
pipe_size = "64KiB"

[fifo.in]
[fifo.in2]
[fifo.out]

[[route]]
from = ["in", "in2"]
to = ["out"]
buffer = "4KiB"
"#,
    );
    // `out` has no reader: its pipe and the route's 4 KiB fill up, and
    // `in2`'s bytes wait in its pipe, not read.
    hold(&d, "in", "out", 0, A, 0, 66 * KIB);
    let w2 = open_writer(&d.fifo("in2"));
    write_pattern(&w2, B, 0, 10 * KIB, Instant::now() + TIMEOUT);
    status_until(&d, "in2 waiting", |st| {
        let waiting = num(fifo_entry(st, "in2"), "queued");
        let held = num(sink_entry(st, 0, "out"), "held");
        let queued = num(fifo_entry(st, "out"), "queued");
        waiting > 0 && held + queued + waiting == 76 * KIB as u64
    });
    // `in2` goes, and the route changes with it.
    d.reload_ok(
        "[daemon]\npipe_size = \"64KiB\"\n\n[fifo.in]\n[fifo.out]\n\n[[route]]\nfrom = [\"in\"]\nto = [\"out\"]\n",
    );
    assert!(lstat(&d.fifo("in2")).is_none(), "in2 is still there");
    drop(w2);
    let r = open_reader(&d.fifo("out"));
    read_verified(&d, &r, A, 0, 66 * KIB);
    read_verified(&d, &r, B, 0, 10 * KIB);
    let w = open_writer(&d.fifo("in"));
    assert_nothing_more(&d, &r, &[&w]);
}

// ---------------------------------------------------------------------------
// What an invalid reload does: nothing
// ---------------------------------------------------------------------------

#[test]
fn an_invalid_reload_changes_nothing_and_fifod_keeps_serving() {
    let config = r#"
[fifo.in]
mode = "0620"
[fifo.out]
[fifo.spare]

[[route]]
from = ["in"]
to = ["out"]
"#;
    let d = Daemon::start(config);
    let names = ["in", "out", "spare"];
    let nodes: Vec<(u64, u32)> = names.iter().map(|n| node(&d.fifo(n))).collect();
    let listing = || -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d.sb.run_dir())
            .expect("read the run dir")
            .map(|e| {
                e.expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        v.sort();
        v
    };
    // Something that is no FIFO, where a reload will want one.
    fs::write(d.fifo("bbb"), "a regular file\n").expect("write run/bbb");
    let before = listing();
    let r = open_reader(&d.fifo("out"));
    let w = open_writer(&d.fifo("in"));
    let mut sent = 0u64;
    let mut flows = |what: &str| {
        write_pattern(&w, 7, sent, 10 * KIB, Instant::now() + TIMEOUT);
        read_verified(&d, &r, 7, sent, 10 * KIB);
        sent += 10 * KIB as u64;
        assert_eq!(listing(), before, "after {what}");
        for (n, was) in names.iter().zip(&nodes) {
            assert_eq!(node(&d.fifo(n)), *was, "{n} after {what}");
        }
    };

    // Not TOML at all.
    d.sb.write_raw_config("[fifo.in\nmode = 0620\n");
    let why = d.reload().expect_err("garbage applied");
    assert!(why.contains("the new config is invalid"), "{why}");
    flows("a garbage config");

    // Valid TOML, but an unknown endpoint: every error is reported.
    d.sb.write_config(&format!(
        "{config}\n[fifo.more]\n\n[[route]]\nfrom = [\"in\"]\nto = [\"ouput\"]\n"
    ));
    let why = d.reload().expect_err("an invalid config applied");
    assert!(why.contains("invalid"), "{why}");
    assert!(
        d.log().contains("unknown endpoint \"ouput\""),
        "{}",
        d.log()
    );
    flows("an unknown endpoint");

    // What needs a restart is refused, naming the key.
    for (key, daemon_table) in [
        ("daemon.dir", "dir = \"{ROOT}/run2\""),
        ("daemon.dir_mode", "dir_mode = \"0750\""),
        ("daemon.control", "control = \"other.sock\""),
    ] {
        d.sb.write_config(&format!(
            "[daemon]\n{daemon_table}\n{config}\n[fifo.more]\n"
        ));
        let why = d.reload().expect_err("a restart-only change applied");
        assert!(
            why.contains(key) && why.contains("restart"),
            "reload failed: {why}"
        );
        flows(key);
    }
    assert!(lstat(&d.sb.path("run2")).is_none(), "run2 was made");

    // A FIFO that cannot be made fails the reload before anything changed:
    // the one made before it is removed again.
    d.sb.write_config(&format!("{config}\n[fifo.aaa]\n[fifo.bbb]\n"));
    let why = d.reload().expect_err("a FIFO over a regular file");
    assert!(
        why.contains(&d.fifo("bbb").display().to_string()),
        "reload failed: {why}"
    );
    assert!(d.log().contains("created fifo aaa"), "{}", d.log());
    flows("a FIFO that cannot be made");

    // And the next valid one applies.
    d.reload_ok(&format!("{config}\n[fifo.more]\n"));
    node(&d.fifo("more"));
}

// ---------------------------------------------------------------------------
// Lines in progress across reloads
// ---------------------------------------------------------------------------

/// Lines per writer in the line test.
const LINES: usize = 20_000;

/// Line `n` of writer `id`: `id:n:` then a run of one letter, 0 to 299
/// long, then a newline.
fn line(id: usize, n: usize) -> Vec<u8> {
    let len = (pattern_block(id as u64, n as u64) % 300) as usize;
    let mut l = format!("{id}:{n}:").into_bytes();
    l.extend(std::iter::repeat_n(b'a' + (n % 26) as u8, len));
    l.push(b'\n');
    l
}

/// Reads the line test's output until both writers' lines came, checking
/// that each is whole and the next of its writer; returns the reader.
fn check_lines(r: File, progress: &Progress) -> Result<File, String> {
    let end = Instant::now() + BULK_TIMEOUT;
    let mut next = [0usize; 2];
    let mut buf = vec![0u8; 256 * KIB];
    let mut partial: Vec<u8> = Vec::new();
    while next.iter().sum::<usize>() < 2 * LINES {
        let k = read_some(&r, &mut buf, end);
        if k == 0 {
            return Err(format!("EOF after {next:?} lines"));
        }
        partial.extend_from_slice(&buf[..k]);
        let complete = partial
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        for got in partial[..complete].split_inclusive(|&b| b == b'\n') {
            let text = String::from_utf8_lossy(got);
            let id: usize = text
                .split(':')
                .next()
                .and_then(|s| s.parse().ok())
                .filter(|&id: &usize| id < 2)
                .ok_or_else(|| format!("a line from nowhere: {text:?}"))?;
            let want = line(id, next[id]);
            if got != want {
                return Err(format!(
                    "writer {id}, line {}: expected {:?}, got {text:?}",
                    next[id],
                    String::from_utf8_lossy(&want)
                ));
            }
            next[id] += 1;
            progress.set(next.iter().sum::<usize>() as u64);
        }
        partial.drain(..complete);
    }
    if partial.is_empty() {
        Ok(r)
    } else {
        Err(format!("{} bytes after the last line", partial.len()))
    }
}

/// The line test's config: a line route from two inputs to one output.
fn lines_config(buffer: &str, in1_mode: &str, extra: bool) -> String {
    let mut t = format!(
        r#"
[fifo.in0]
[fifo.in1]
mode = "{in1_mode}"
[fifo.out]

[[route]]
from = ["in0", "in1"]
to = ["out"]
framing = "lines"
buffer = "{buffer}"
"#
    );
    if extra {
        t.push_str("\n[fifo.extra]\n");
    }
    t
}

#[test]
fn fan_in_lines_stay_whole_and_complete_through_reloads() {
    const PARTS: usize = 5;
    let d = Daemon::start(&lines_config("1MiB", "0600", false));
    let allowed = Arc::new(AtomicUsize::new(1));
    let writers: Vec<Joiner<File>> = (0..2)
        .map(|id| {
            let w = open_writer(&d.fifo(&format!("in{id}")));
            let gate = Arc::clone(&allowed);
            spawn(move || {
                let end = Instant::now() + BULK_TIMEOUT;
                let mut pending = Vec::new();
                for n in 0..LINES {
                    let part = n * PARTS / LINES;
                    if gate.load(Ordering::SeqCst) <= part {
                        // Whatever is pending goes before waiting, cut
                        // anywhere: the cut may sit in a line.
                        write_all(&w, &pending, end);
                        pending.clear();
                        assert!(
                            wait_until(BULK_TIMEOUT, || gate.load(Ordering::SeqCst) > part),
                            "part {part} never allowed"
                        );
                    }
                    pending.extend(line(id, n));
                    // Writes of 1 to 4000 bytes, cut anywhere.
                    let size = 1 + (pattern_block(99 + id as u64, n as u64) % 4000);
                    if pending.len() as u64 >= size {
                        write_all(&w, &pending[..size as usize], end);
                        pending.drain(..size as usize);
                    }
                }
                write_all(&w, &pending, end);
                w
            })
        })
        .collect();

    // The reader checks every line as it comes, and counts them.
    let lines_read = Arc::new(Progress::default());
    let progress = Arc::clone(&lines_read);
    let r = open_reader(&d.fifo("out"));
    let reader = spawn(move || progress.end(check_lines(r, &progress)));

    let reloads = [
        lines_config("64KiB", "0600", false),
        lines_config("64KiB", "0600", true),
        lines_config("64KiB", "0640", true),
        lines_config("1MiB", "0640", false),
    ];
    for (part, config) in reloads.iter().enumerate() {
        let target = (2 * part + 1) * LINES / PARTS;
        lines_read.wait_for(&d, target as u64, "lines");
        d.reload_ok(config);
        allowed.fetch_max(part + 2, Ordering::SeqCst);
    }
    allowed.fetch_max(PARTS, Ordering::SeqCst);
    lines_read.wait_for(&d, 2 * LINES as u64, "lines");
    let ws: Vec<File> = writers.into_iter().map(|w| w.join(BULK_TIMEOUT)).collect();
    let r = match reader.join(BULK_TIMEOUT) {
        Ok(r) => r,
        Err(e) => panic!("{e}\n--- log ---\n{}", d.log()),
    };
    assert_nothing_more(&d, &r, &[&ws[0], &ws[1]]);
    let log = d.log();
    assert!(log.contains("reload: fifo in1: mode 0600 -> 0640"), "{log}");
    assert_eq!(reload_outcomes(&log), vec![Ok(()); reloads.len()]);
}

// ---------------------------------------------------------------------------
// A storm of SIGHUPs
// ---------------------------------------------------------------------------

#[test]
fn a_hundred_sighups_in_a_row_lose_nothing() {
    const SEED: u64 = 0x57_0e;
    const LEN: usize = 16 * MIB;
    const STEP: u64 = 32 * KIB as u64;
    let mut d = Daemon::start(IN_OUT);
    // The storm falls in the first half, which the writer is still writing.
    let flow = Flow::start(&d, "in", "out", SEED, LEN, 2);
    let start = MIB as u64;
    flow.wait_read(&d, start);
    let pid = Pid::from_raw(d.pid() as i32);
    for i in 1..=100 {
        kill(pid, Signal::SIGHUP).expect("kill");
        // Bytes moving on means the loop ran: the signals are not all
        // merged into one, unless they come faster than bytes do.
        flow.wait_read(&d, start + i * STEP);
    }
    // A last reload with a change tells when the storm is over.
    d.sb.write_config(&format!("{IN_OUT}\n[fifo.marker]\n"));
    d.signal(Signal::SIGHUP);
    wait_log(&d, "the marker's reload", TIMEOUT, |log| {
        log.contains("reload: added fifo marker")
    });
    node(&d.fifo("marker"));
    let (w, r) = flow.finish(&d);
    assert_nothing_more(&d, &r, &[&w]);
    let outcomes = reload_outcomes(&d.log());
    assert!(
        !outcomes.is_empty() && outcomes.iter().all(Result::is_ok),
        "{outcomes:?}"
    );
    d.stop_ok();
    assert_clean_stats(&d, 0, "out", LEN as u64);
}

// ---------------------------------------------------------------------------
// `fifod reload`: a reload that answers
// ---------------------------------------------------------------------------

#[test]
fn fifod_reload_returns_once_the_config_is_in_force_and_says_what_changed() {
    let mut d = Daemon::start(IN_OUT);
    d.sb.write_config(&format!("{IN_OUT}\n[fifo.extra]\n"));
    let out = d.sb.run_cmd("reload", &Launch::default());
    out.assert_code(0);
    // No wait: once the command returned, the change is there.
    assert!(
        d.fifo("extra").exists(),
        "fifod reload returned before the reload was applied\n{}",
        d.log()
    );
    assert!(
        out.stdout.starts_with("reloaded:\n") && out.stdout.contains("added fifo extra"),
        "{}",
        out.stdout
    );
    // Again, with nothing new.
    let out = d.sb.run_cmd("reload", &Launch::default());
    out.assert_code(0);
    assert_eq!(out.stdout, "reloaded: the config did not change\n");
    relays(&d.fifo("in"), &d.fifo("out"), b"still relayed\n");
    d.stop_ok();
}

#[test]
fn fifod_reload_of_a_rejected_config_exits_1_with_every_error() {
    let mut d = Daemon::start(IN_OUT);
    d.sb.write_config(
        r#"
[fifo.in]
mode = "999"
[fifo.out]

[[route]]
from = ["in"]
to = ["ouput"]
"#,
    );
    let out = d.sb.run_cmd("reload", &Launch::default());
    out.assert_code(1);
    let config = d.sb.config_path().display().to_string();
    assert!(
        out.stderr
            .contains(&format!("{config}:6:8: fifo.in.mode: invalid mode"))
            && out
                .stderr
                .contains(&format!("{config}:11:7: route[0].to: unknown endpoint"))
            && out
                .stderr
                .ends_with("reload failed: the running config stays in force\n"),
        "{}",
        out.stderr
    );
    relays(
        &d.fifo("in"),
        &d.fifo("out"),
        b"the old config is in force\n",
    );
    d.stop_ok();
}

#[test]
fn fifod_reload_without_a_daemon_exits_3() {
    let sb = Sandbox::new();
    sb.write_config(IN_OUT);
    let out = sb.run_cmd("reload", &Launch::default());
    out.assert_code(3);
    assert!(
        out.stderr.contains("fifod is not running"),
        "{}",
        out.stderr
    );
}
