//! Small system helpers: FIFOs, pipe sizes, limits, /proc, CPU affinity.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::harness::Res;

fn cstr(p: &Path) -> Res<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())
}

pub fn mkfifo(p: &Path) -> Res<()> {
    let c = cstr(p)?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(format!(
            "mkfifo {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Opens a FIFO for writing (blocks until there is a reader; the watchdog
/// bounds the wait).
pub fn open_w(p: &Path) -> Res<File> {
    OpenOptions::new()
        .write(true)
        .open(p)
        .map_err(|e| format!("open {} for writing: {e}", p.display()))
}

/// Opens a FIFO for reading (blocks until there is a writer).
pub fn open_r(p: &Path) -> Res<File> {
    File::open(p).map_err(|e| format!("open {} for reading: {e}", p.display()))
}

pub fn open_nonblock(p: &Path, write: bool) -> Res<OwnedFd> {
    let mut o = OpenOptions::new();
    if write {
        o.write(true);
    } else {
        o.read(true);
    }
    o.custom_flags(libc::O_NONBLOCK)
        .open(p)
        .map(OwnedFd::from)
        .map_err(|e| format!("open {}: {e}", p.display()))
}

/// Connects to the Unix stream socket at `p` without waiting: a full
/// listen queue fails at once with `WouldBlock` (`UnixStream::connect`
/// would wait for room, with no deadline). The stream stays non-blocking.
pub fn connect_nonblock(p: &Path) -> io::Result<UnixStream> {
    let name = p.as_os_str().as_encoded_bytes();
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if name.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: too long for a socket address", p.display()),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (to, &from) in addr.sun_path.iter_mut().zip(name) {
        *to = from as libc::c_char;
    }
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: connect(2) with a valid address of the size given.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

pub fn set_pipe_size(fd: RawFd, size: usize) {
    // SAFETY: fcntl on an fd we own.
    unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, size as libc::c_int) };
}

/// Raises the soft RLIMIT_NOFILE to the hard one; children inherit it.
pub fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Machine-wide busy CPU seconds so far (from /proc/stat).
pub fn machine_busy() -> f64 {
    fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let l = s.lines().next()?.to_string();
            let v: Vec<f64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal
            let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?;
            Some(busy / clock_ticks())
        })
        .unwrap_or(0.0)
}

/// utime + stime of a process, in seconds (from /proc/PID/stat).
pub fn proc_cpu(pid: i32) -> Res<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 2..])
        .ok_or("bad /proc stat")?;
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of stat; `after` starts at field 3.
    let ut: f64 = f.get(11).and_then(|s| s.parse().ok()).ok_or("utime")?;
    let st: f64 = f.get(12).and_then(|s| s.parse().ok()).ok_or("stime")?;
    Ok((ut + st) / clock_ticks())
}

/// A `Key:   N kB` (or plain count) line of /proc/PID/status.
pub fn proc_status(pid: i32, key: &str) -> Res<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no {key} in /proc/{pid}/status"))
}

/// The CPUs this program may run on.
pub fn affinity() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is valid; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer and size.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return vec![0];
    }
    // SAFETY: CPU_ISSET reads the set.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Pins the main thread, hence every thread and process it starts from now
/// on, to `cpus`.
pub fn set_affinity(cpus: &[usize]) -> Result<(), ()> {
    // SAFETY: an all-zero cpu_set_t is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: c < CPU_SETSIZE (it came from affinity()).
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: valid pointer and size.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r == 0 { Ok(()) } else { Err(()) }
}

/// Makes sure this process, and so every child it starts from now on, may
/// open `needed` files: raises the soft limit, and the hard one if need be
/// (which takes privilege).
pub fn ensure_nofile(needed: u64) -> Res<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
    }
    if lim.rlim_cur >= needed {
        return Ok(());
    }
    lim.rlim_max = lim.rlim_max.max(needed);
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(format!(
            "RLIMIT_NOFILE must allow {needed} files: {} (raise it with ulimit -n)",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}
