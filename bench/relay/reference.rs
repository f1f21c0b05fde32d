//! The physical-limit row: a minimal splice/tee relay, with no fifod code.
//!
//! One thread, `poll`, and non-blocking `splice`/`tee` between the same
//! FIFOs the fifod row uses, at the pipe size fifod gives them by default
//! (1 MiB), and nothing else: no config, no lanes, no accounting, no log.
//! What it reaches is what a relay that does nothing else can reach on this
//! machine; fifod's ratio to it is the cost of everything else fifod does.
//! It runs as a child process (this binary, started again with
//! `--splice-relay IN OUT...`), like fifod and socat, so that its CPU time
//! is counted the same way.
//!
//! 1 → 1: `splice(in, out)` moves the input's pages into the output.
//! 1 → N: `tee(in, out_i)` gives each output the input's pages without
//! consuming them; the prefix every output has is then spliced away to
//! /dev/null. `tee` always starts at the front of the input, so an output
//! that took more than the slowest one waits until the others catch up.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::null_mut;

use crate::competitors::Relay;

/// The argument that starts this binary as the reference relay.
pub const FLAG: &str = "--splice-relay";
/// The most one splice or tee moves, and the pipe size of the FIFOs.
const CHUNK: usize = 1 << 20;

/// The reference relay from `from` to `to` (FIFO names in the harness's
/// directory), as a relay variant.
pub fn relay(from: &str, to: &[&str]) -> Relay {
    let exe = std::env::current_exe().map_or_else(|_| "?".into(), |p| p.display().to_string());
    let mut argv = vec![exe, FLAG.to_string(), format!("{{d}}/{from}")];
    argv.extend(to.iter().map(|t| format!("{{d}}/{t}")));
    Relay::Cmd(argv)
}

/// `--splice-relay IN OUT...`: relays until the input's writer closes.
pub fn main(args: &[String]) -> ! {
    let Some((input, outputs)) = args.split_first().filter(|(_, o)| !o.is_empty()) else {
        eprintln!("usage: {FLAG} IN OUT...");
        std::process::exit(2);
    };
    match open_and_relay(input, outputs) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("reference relay: {e}");
            std::process::exit(1);
        }
    }
}

fn open_and_relay(input: &str, outputs: &[String]) -> io::Result<()> {
    // Blocking opens: each returns once the harness's thread opened the
    // other end, so that an empty input never reads as EOF.
    let input = File::open(input)?;
    let outputs: Vec<File> = outputs
        .iter()
        .map(|p| OpenOptions::new().write(true).open(p))
        .collect::<io::Result<_>>()?;
    let null = OpenOptions::new().write(true).open("/dev/null")?;
    let outs: Vec<RawFd> = outputs.iter().map(AsRawFd::as_raw_fd).collect();
    for &fd in outs.iter().chain([&input.as_raw_fd()]) {
        // SAFETY: fcntl on fds we own. A size the kernel refuses stays as it was.
        unsafe {
            libc::fcntl(fd, libc::F_SETPIPE_SZ, CHUNK as libc::c_int);
            libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK);
        }
    }
    relay_loop(input.as_raw_fd(), &outs, null.as_raw_fd())
}

fn relay_loop(input: RawFd, outs: &[RawFd], null: RawFd) -> io::Result<()> {
    // Bytes at the front of the input that each output already has.
    let mut ahead = vec![0usize; outs.len()];
    loop {
        let mut moved = false;
        if let [out] = outs {
            // SAFETY: splice between fds we own, no offsets.
            let n = unsafe { libc::splice(input, null_mut(), *out, null_mut(), CHUNK, FLAGS) };
            match done(n, input)? {
                Some(0) => return Ok(()), // the input is empty and its writer gone
                Some(_) => moved = true,
                None => {}
            }
        } else {
            for (&out, ahead) in outs.iter().zip(&mut ahead) {
                if *ahead > 0 {
                    continue;
                }
                // SAFETY: tee between fds we own.
                match done(unsafe { libc::tee(input, out, CHUNK, FLAGS) }, input)? {
                    Some(0) => return Ok(()),
                    Some(n) => (*ahead, moved) = (n, true),
                    None => {}
                }
            }
            let taken = ahead.iter().copied().min().unwrap_or(0);
            let mut left = taken;
            while left > 0 {
                // SAFETY: splice between fds we own, no offsets.
                let n = unsafe { libc::splice(input, null_mut(), null, null_mut(), left, FLAGS) };
                match done(n, input)? {
                    Some(n) if n > 0 => left -= n,
                    _ => return Err(io::Error::other("the input lost bytes that were teed")),
                }
            }
            ahead.iter_mut().for_each(|a| *a -= taken);
        }
        if !moved {
            wait(input, outs, &ahead)?;
        }
    }
}

const FLAGS: libc::c_uint = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;

/// A splice's or tee's result: `None` when it would block, `Some(0)` at the
/// end. The kernel reports an output without reader before an input at EOF,
/// so EPIPE with the input empty is the end too (a reader may leave as soon
/// as it has every byte).
fn done(n: isize, input: RawFd) -> io::Result<Option<usize>> {
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) => Ok(None),
        Some(libc::EPIPE) if pending(input) == 0 => Ok(Some(0)),
        _ => Err(e),
    }
}

/// Bytes in a pipe.
fn pending(fd: RawFd) -> libc::c_int {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD into a c_int on an fd we own.
    unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    n
}

/// Nothing moved: sleeps until the input has bytes (or its writer left) if
/// it is empty, else until an output at the input's front has room.
fn wait(input: RawFd, outs: &[RawFd], ahead: &[usize]) -> io::Result<()> {
    let poll_fd = |fd, events| libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let mut fds: Vec<libc::pollfd> = if pending(input) == 0 {
        vec![poll_fd(input, libc::POLLIN)]
    } else {
        let front = outs.iter().zip(ahead).filter(|(_, a)| **a == 0);
        front.map(|(&o, _)| poll_fd(o, libc::POLLOUT)).collect()
    };
    // SAFETY: fds is a valid array of pollfd.
    if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}
