//! Small system calls on pipe fds that nix does not wrap: how many bytes a
//! pipe holds, and its capacity.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};

nix::ioctl_read_bad!(fionread, libc::FIONREAD, libc::c_int);

/// Bytes waiting in the pipe behind `fd` (FIONREAD); 0 if it cannot be told.
pub fn queued_bytes(fd: BorrowedFd<'_>) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which points to
    // a live local; the fd is borrowed, so it stays open for the call.
    match unsafe { fionread(fd.as_raw_fd(), &mut n) } {
        Ok(_) => usize::try_from(n).unwrap_or(0),
        Err(_) => 0,
    }
}

/// The pipe's capacity in bytes.
pub fn capacity(fd: BorrowedFd<'_>) -> Result<usize, Errno> {
    fcntl(fd, FcntlArg::F_GETPIPE_SZ).map(|n| usize::try_from(n).unwrap_or(0))
}

/// What `set_capacity` achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Resized {
    /// The kernel gave at least what was asked (it rounds up to pages).
    Done(usize),
    /// Unprivileged processes may not exceed `/proc/sys/fs/pipe-max-size`;
    /// the pipe got that limit instead.
    Capped { limit: usize, got: usize },
    /// The kernel refused (e.g. the user's pipe pages are used up); the pipe
    /// keeps its size.
    Refused { errno: Errno, got: usize },
}

/// Asks for a pipe capacity of `want` bytes, falling back to the system's
/// limit when that is lower.
pub fn set_capacity(fd: BorrowedFd<'_>, want: usize) -> Resized {
    let want_c = libc::c_int::try_from(want).unwrap_or(libc::c_int::MAX);
    let current = || capacity(fd).unwrap_or(0);
    match fcntl(fd, FcntlArg::F_SETPIPE_SZ(want_c)) {
        Ok(_) => Resized::Done(current()),
        Err(Errno::EPERM) => {
            let limit = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
                .ok()
                .and_then(|s| s.trim().parse::<libc::c_int>().ok());
            match limit {
                Some(limit) if limit < want_c => match fcntl(fd, FcntlArg::F_SETPIPE_SZ(limit)) {
                    Ok(_) => Resized::Capped {
                        limit: usize::try_from(limit).unwrap_or(0),
                        got: current(),
                    },
                    Err(errno) => Resized::Refused {
                        errno,
                        got: current(),
                    },
                },
                _ => Resized::Refused {
                    errno: Errno::EPERM,
                    got: current(),
                },
            }
        }
        Err(errno) => Resized::Refused {
            errno,
            got: current(),
        },
    }
}
