//! strace attached to a running daemon: to inject faults into its system
//! calls, or to see which ones it makes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use super::{TIMEOUT, spawn, wait_child};

/// Whether strace can run here (CI installs it).
pub fn have_strace() -> bool {
    Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// strace attached to `pid`, each of `options` passed as `-e OPTION`
/// (`inject=…`, `trace=…`), tracing into `trace`; returns once it says it
/// is attached.
pub fn attach_strace(pid: u32, trace: &std::path::Path, options: &[&str]) -> Child {
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-y", "-o"]).arg(trace);
    for spec in options {
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
pub fn detach_strace(mut strace: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(strace.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    assert!(
        wait_child(&mut strace, TIMEOUT).is_some(),
        "strace did not detach"
    );
}
