//! Small system calls on pipe fds that nix does not wrap: how many bytes a
//! pipe holds, and its capacity; and fifod's own private pipes.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};

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

/// Whether the pipe that the write-only `fd` is on has a reader: the
/// kernel reports an error on a pipe's write side while it has none.
pub fn has_reader(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLOUT)];
    loop {
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO) {
            Ok(_) => {
                return !fds[0]
                    .revents()
                    .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLERR));
            }
            Err(nix::errno::Errno::EINTR) => continue,
            // Cannot tell: assume someone reads, as before.
            Err(_) => return true,
        }
    }
}

/// Whether the pipe that the read-only `fd` is on has no writer left (the
/// kernel reports a hang-up on a pipe's read side then).
pub fn hung_up(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
    loop {
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO) {
            Ok(_) => {
                return fds[0]
                    .revents()
                    .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLHUP));
            }
            Err(nix::errno::Errno::EINTR) => continue,
            // Cannot tell: let a read find out.
            Err(_) => return true,
        }
    }
}

/// Fills the pipe `fd` is on to the brim through a write fd of fifod's
/// own, so that no writer can put another byte in it, and returns how many
/// bytes others had put in it and nobody read: an exact count of what a
/// writer still writing at stop wrote and will lose (its next write fails
/// once fifod closes the pipe).
pub fn freeze(fd: BorrowedFd<'_>) -> usize {
    let Ok(writer) = crate::fifo::reopen_node(fd, nix::fcntl::OFlag::O_WRONLY) else {
        return queued_bytes(fd);
    };
    // Larger than PIPE_BUF, so a write takes whatever room is left.
    let filler = [0u8; 64 * 1024];
    let mut filled = 0;
    loop {
        match nix::unistd::write(&writer, &filler) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    queued_bytes(fd).saturating_sub(filled)
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
            let limit = fs_limit("pipe-max-size").and_then(|n| libc::c_int::try_from(n).ok());
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

/// An anonymous pipe of fifod's own, both ends non-blocking and
/// close-on-exec.
#[derive(Debug)]
pub struct PrivatePipe {
    pub read: OwnedFd,
    pub write: OwnedFd,
    /// Its capacity in bytes.
    pub capacity: usize,
}

impl PrivatePipe {
    /// A new pipe of at least `want` bytes if the kernel agrees, of its
    /// default size otherwise.
    pub fn new(want: usize) -> Result<PrivatePipe, Errno> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        let mut capacity = capacity(read.as_fd())?;
        if want > capacity {
            let want_c = libc::c_int::try_from(want).unwrap_or(libc::c_int::MAX);
            if let Ok(got) = fcntl(read.as_fd(), FcntlArg::F_SETPIPE_SZ(want_c)) {
                capacity = usize::try_from(got).unwrap_or(capacity);
            }
        }
        Ok(PrivatePipe {
            read,
            write,
            capacity,
        })
    }
}

/// Whether the kernel lets this process exceed the per-user pipe limits
/// (`CAP_SYS_RESOURCE` or `CAP_SYS_ADMIN` in its effective set).
pub fn unlimited() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_SYS_RESOURCE: u32 = 24;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN | 1 << CAP_SYS_RESOURCE) != 0)
}

/// The kernel's page, the unit of its pipe accounting.
pub const PAGE: usize = 4096;

/// A quarter of this user's pipe budget (`fs.pipe-user-pages-soft`), in
/// bytes, or `None` when the kernel does not hold this process to it. The
/// kernel counts every pipe's capacity against its user and, past the
/// budget, gives that user's new pipes two pages only: fifod's FIFOs may
/// take one such share, and the pipes that hold its lanes' bytes another.
pub fn budget_share() -> Option<usize> {
    let soft_pages = fs_limit("pipe-user-pages-soft").unwrap_or(0);
    if soft_pages == 0 || unlimited() {
        return None;
    }
    Some(soft_pages.saturating_mul(PAGE) / 4)
}

/// A number from `/proc/sys/fs/`, such as `pipe-max-size`.
pub fn fs_limit(name: &str) -> Option<usize> {
    std::fs::read_to_string(format!("/proc/sys/fs/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}
