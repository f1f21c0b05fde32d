//! Faults injected into fifod's own system calls with `strace -e inject=`:
//! interrupted and would-block I/O while bytes flow, and a full disk at
//! start. strace is attached to the running daemon (`-p`), so the daemon is
//! started and stopped as in every other test.

use std::ffi::OsString;
use std::time::Instant;

use crate::common::{
    Daemon, KIB, Launch, Sandbox, TEE_AND_SPLICE, TIMEOUT, Verifier, attach_strace, detach_strace,
    have_strace, open_reader, open_writer, read_exact, spawn, write_pattern,
};

#[test]
fn interrupted_and_would_block_io_loses_nothing() {
    if !have_strace() {
        println!("note: skipped: strace is not installed");
        return;
    }
    const SEED: u64 = 0x1f;
    const LEN: usize = 8 * 1024 * KIB;
    // Every way bytes move meets the faults.
    let mut d = Daemon::start(TEE_AND_SPLICE);
    let trace = d.sb.path("strace.out");
    // Every 3rd call from the 2nd fails: reads, writes, splices and tees
    // with EINTR, waits with EINTR too, and every 5th write with EAGAIN.
    let strace = attach_strace(
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
    detach_strace(strace);
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
