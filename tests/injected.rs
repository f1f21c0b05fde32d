//! Faults injected into fifod's own system calls with `strace -e inject=`:
//! interrupted and would-block I/O while bytes flow, and a full disk at
//! start. strace is attached to the running daemon (`-p`), so the daemon is
//! started and stopped as in every other test.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use crate::common::{
    Daemon, KIB, Launch, Sandbox, TIMEOUT, Verifier, open_reader, open_writer, read_exact, spawn,
    wait_child, write_pattern,
};

/// Whether strace can run here (CI installs it).
fn have_strace() -> bool {
    Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// strace attached to `pid` with `injections`, tracing into `trace`; returns
/// once it says it is attached.
fn attach(pid: u32, trace: &std::path::Path, injections: &[&str]) -> Child {
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-o"]).arg(trace);
    for spec in injections {
        cmd.args(["-e", spec]);
    }
    cmd.args(["-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn strace");
    let stderr = child.stderr.take().expect("strace's stderr");
    let attached = spawn(move || {
        let mut said = String::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            said.push_str(&line);
            said.push('\n');
            if line.contains("attached") {
                return Ok(());
            }
        }
        Err(said)
    });
    if let Err(said) = attached.join(TIMEOUT) {
        let _ = child.kill();
        panic!("strace did not attach:\n{said}");
    }
    child
}

/// Detaches strace (SIGTERM makes it let go of the tracee) and waits.
fn detach(mut strace: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(strace.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    assert!(
        wait_child(&mut strace, TIMEOUT).is_some(),
        "strace did not detach"
    );
}

#[test]
fn interrupted_and_would_block_io_loses_nothing() {
    if !have_strace() {
        println!("note: skipped: strace is not installed");
        return;
    }
    const SEED: u64 = 0x1f;
    const LEN: usize = 8 * 1024 * KIB;
    // One byte route to two outputs (tee) and one to a single output
    // (splice), so that every way bytes move meets the faults.
    let mut d = Daemon::start(
        r#"
[fifo.in]
[fifo.a]
[fifo.b]
[fifo.in2]
[fifo.c]

[[route]]
from = ["in"]
to = ["a", "b"]

[[route]]
from = ["in2"]
to = ["c"]
"#,
    );
    let trace = d.sb.path("strace.out");
    // Every 3rd call from the 2nd fails: reads, writes, splices and tees
    // with EINTR, waits with EINTR too, and every 5th write with EAGAIN.
    let strace = attach(
        d.pid(),
        &trace,
        &[
            "inject=read,splice,tee:error=EINTR:when=2+3",
            "inject=write:error=EAGAIN:when=2+5",
            "inject=epoll_wait:error=EINTR:when=2+3",
        ],
    );
    let readers: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            let r = open_reader(&d.fifo(name));
            let seed = if name == "c" { SEED + 1 } else { SEED };
            spawn(move || {
                let got = read_exact(&r, LEN, TIMEOUT * 3);
                Verifier::new(seed, 0).check(&got)
            })
        })
        .collect();
    let writers: Vec<_> = [("in", SEED), ("in2", SEED + 1)]
        .into_iter()
        .map(|(name, seed)| {
            let w = open_writer(&d.fifo(name));
            spawn(move || write_pattern(&w, seed, 0, LEN, Instant::now() + TIMEOUT * 3))
        })
        .collect();
    for w in writers {
        w.join(TIMEOUT * 4);
    }
    for r in readers {
        if let Err(e) = r.join(TIMEOUT * 4) {
            panic!("{e}\n--- log ---\n{}", d.log());
        }
    }
    detach(strace);
    let traced = std::fs::read_to_string(&trace).unwrap_or_default();
    for call in ["read(", "write(", "epoll_wait("] {
        assert!(
            traced
                .lines()
                .any(|l| l.contains(call) && l.contains("(INJECTED)")),
            "no fault was injected into {call}): the test proved nothing"
        );
    }
    d.stop_ok();
}

#[test]
fn a_full_disk_at_start_is_a_clear_error_and_leaves_nothing() {
    if !have_strace() {
        println!("note: skipped: strace is not installed");
        return;
    }
    let sb = Sandbox::new();
    sb.write_config("[fifo.in]\n[fifo.out]\n\n[[route]]\nfrom = [\"in\"]\nto = [\"out\"]\n");
    let launch = Launch {
        bin: Some("strace".into()),
        ..Launch::default()
    };
    // The second FIFO cannot be made: the first must go again.
    let args: Vec<OsString> = vec![
        "-f".into(),
        "-qq".into(),
        "-o".into(),
        "/dev/null".into(),
        "-e".into(),
        "inject=mknodat:error=ENOSPC:when=2".into(),
        crate::common::BIN.into(),
        "run".into(),
        "--config".into(),
        sb.config_path().into(),
    ];
    let out = sb.run_to_exit(&args, &launch);
    out.assert_code(1);
    assert!(
        out.stderr.contains("No space left on device") && out.stderr.contains("out"),
        "unclear error: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(!sb.run_dir().exists(), "left {}", sb.run_dir().display());
}
