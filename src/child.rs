//! Child processes: spawning them with anonymous pipes on their standard
//! streams, reaping, the restart back-off, and stopping by process group.
//!
//! Pipes come from `std::io::pipe`, which makes every fd close-on-exec; a
//! child gets only its three standard streams. std gives the child an empty
//! signal mask; every signal's disposition is reset to the default before
//! exec, since a signal ignored by whoever started fifod (as `nohup` does)
//! would otherwise stay ignored in the child.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::config::{CLEAN_PATH, ProcessConfig, Restart, StderrMode};

/// The back-off never grows past this (unless `restart_delay` is longer).
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
/// The back-off after the first restart is at least this.
const MIN_BACKOFF: Duration = Duration::from_millis(1);
/// A child that ran this long was healthy: its back-off starts over.
const STABLE_RUN: Duration = Duration::from_secs(10);

/// Variables a supervisor sets for fifod alone; a child must not answer
/// systemd in fifod's name or take its sockets.
const PRIVATE_VARIABLES: [&str; 10] = [
    "NOTIFY_SOCKET",
    "FDSTORE",
    "FIFOD_HANDOVER",
    "FIFOD_HANDOVER_PID",
    "FIFOD_UPGRADES",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// The kernel's own `struct sigaction` (not libc's), as `rt_sigaction`
/// takes it on Linux: handler, flags, restorer, then a 64-bit mask.
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// Signals the kernel knows (its `_NSIG`).
const KERNEL_NSIG: libc::c_int = 64;

/// Which of a child's streams fifod relays.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wiring {
    pub stdin: bool,
    pub stdout: bool,
    /// `stderr = "separate"` in a route, or `"log"`.
    pub stderr: bool,
}

/// fifod's ends of a child's pipes, non-blocking.
#[derive(Debug, Default)]
pub struct Pipes {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(Signal),
    /// It could not be started at all.
    SpawnFailed,
    /// It was adopted after fifod restarted, so its status is not fifod's
    /// to read (it is not fifod's child).
    Unknown,
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exited with status {code}"),
            Exit::Signal(signal) => write!(f, "was killed by {}", signal.as_str()),
            Exit::SpawnFailed => f.write_str("could not be started"),
            Exit::Unknown => f.write_str("exited (status unknown: adopted after a restart)"),
        }
    }
}

fn nonblocking(fd: OwnedFd) -> io::Result<OwnedFd> {
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(fd)
}

/// Starts `spec` in its own process group, with pipes where `wiring` says
/// fifod relays a stream and `/dev/null` where nobody would read or write.
/// `outlive_fifod`: the process runs on if fifod dies (with an fd store,
/// where the next fifod adopts it); otherwise it is killed with fifod.
pub fn spawn(
    spec: &ProcessConfig,
    wiring: Wiring,
    outlive_fifod: bool,
) -> io::Result<(Pid, Pipes)> {
    let Some((program, args)) = spec.command.split_first() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
    };
    let mut command = Command::new(program);
    command.args(args).process_group(0);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    for variable in PRIVATE_VARIABLES {
        command.env_remove(variable);
    }
    if spec.clean_env {
        command.env_clear().env("PATH", CLEAN_PATH);
    }
    // Who it runs as, worked out here: the child only makes system calls.
    let identity = Identity::of(spec)?;
    match &identity.account {
        Some(account) => {
            command
                .env("HOME", &account.dir)
                .env("USER", &account.name)
                .env("LOGNAME", &account.name)
                .env("SHELL", &account.shell);
        }
        // A uid with no account: none of fifod's own (root's) either.
        None if identity.uid.is_some() => {
            command
                .env("HOME", "/")
                .env_remove("USER")
                .env_remove("LOGNAME")
                .env_remove("SHELL");
        }
        None => {}
    }
    command.envs(spec.env.iter().map(|(k, v)| (k, v)));

    let mut pipes = Pipes::default();
    if wiring.stdin {
        let (reader, writer) = io::pipe()?;
        command.stdin(reader);
        pipes.stdin = Some(nonblocking(writer.into())?);
    } else {
        command.stdin(Stdio::null());
    }
    let merged = spec.stderr == StderrMode::Merge;
    if wiring.stdout {
        let (reader, writer) = io::pipe()?;
        if merged {
            // One pipe for both streams keeps the order the child wrote in.
            command.stderr(writer.try_clone()?);
        }
        command.stdout(writer);
        pipes.stdout = Some(nonblocking(reader.into())?);
    } else {
        command.stdout(Stdio::null());
        if merged {
            command.stderr(Stdio::null());
        }
    }
    match spec.stderr {
        StderrMode::Merge => {}
        StderrMode::Separate | StderrMode::Log if wiring.stderr => {
            let (reader, writer) = io::pipe()?;
            command.stderr(writer);
            pipes.stderr = Some(nonblocking(reader.into())?);
        }
        StderrMode::Separate | StderrMode::Log | StderrMode::Null => {
            command.stderr(Stdio::null());
        }
        StderrMode::Inherit => {
            command.stderr(Stdio::inherit());
        }
    }
    // SAFETY: the closure runs in the child between fork and exec. It only
    // makes system calls (setgroups, setgid, setuid, prctl, getppid, _exit,
    // rt_sigaction), which are async-signal-safe, and allocates nothing. The raw call reaches the signals glibc keeps for
    // itself (32 and 33), which a posix_spawn higher up may have left
    // ignored; SIGKILL and SIGSTOP refuse, which is fine.
    let fifod = std::process::id();
    unsafe {
        command.pre_exec(move || {
            identity.assume()?;
            // If fifod dies (even by SIGKILL), the child goes too, rather
            // than run on beside the next fifod's copy of it; unless the
            // next fifod will adopt it. Set after the uid changed (std does
            // that first), which would clear it.
            if !outlive_fifod {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            }
            if libc::getppid() as u32 != fifod {
                libc::_exit(1);
            }
            let default = KernelSigaction {
                handler: libc::SIG_DFL,
                flags: 0,
                restorer: 0,
                mask: 0,
            };
            for signal in 1..=KERNEL_NSIG {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    signal,
                    &raw const default,
                    std::ptr::null_mut::<KernelSigaction>(),
                    std::mem::size_of::<u64>(),
                );
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    // `command` holds the child's ends of the pipes; they close with it, so
    // that only the child keeps them.
    drop(command);
    let pid = i32::try_from(child.id()).map_err(|_| io::Error::other("pid out of range"))?;
    Ok((Pid::from_raw(pid), pipes))
}

/// The user, groups and account a process runs as.
#[derive(Debug)]
struct Identity {
    /// The uid to take, if `user` is set (with `no_new_privs`).
    uid: Option<libc::uid_t>,
    /// The gid to take, if `user` or `group` is set.
    gid: Option<libc::gid_t>,
    /// The supplementary groups: the user's own (as `initgroups` gives
    /// them), or none with `group` alone.
    groups: Vec<libc::gid_t>,
    /// The user's passwd entry, for its environment.
    account: Option<nix::unistd::User>,
}

impl Identity {
    fn of(spec: &ProcessConfig) -> io::Result<Identity> {
        let Some(uid) = spec.user else {
            return Ok(Identity {
                uid: None,
                gid: spec.group,
                groups: Vec::new(),
                account: None,
            });
        };
        let account = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .map_err(io::Error::from)?;
        let gid = spec
            .group
            .or(account.as_ref().map(|a| a.gid.as_raw()))
            .unwrap_or(uid);
        let groups = match &account {
            Some(a) => {
                let name = std::ffi::CString::new(a.name.as_bytes())
                    .map_err(|_| io::Error::other("a user name with a NUL byte"))?;
                nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid))
                    .map_err(io::Error::from)?
                    .into_iter()
                    .map(nix::unistd::Gid::as_raw)
                    .collect()
            }
            None => vec![gid],
        };
        Ok(Identity {
            uid: Some(uid),
            gid: Some(gid),
            groups,
            account,
        })
    }

    /// In the child, between fork and exec: groups, gid, then uid (after
    /// which nothing could be changed back), and `no_new_privs`, so that a
    /// setuid program cannot give root back. System calls only.
    fn assume(&self) -> io::Result<()> {
        let check = |r: libc::c_int| {
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        if self.gid.is_some() || self.uid.is_some() {
            // SAFETY: setgroups reads `groups.len()` gids from a live Vec.
            check(unsafe { libc::setgroups(self.groups.len(), self.groups.as_ptr()) })?;
        }
        if let Some(gid) = self.gid {
            // SAFETY: setgid takes a plain id.
            check(unsafe { libc::setgid(gid) })?;
        }
        if let Some(uid) = self.uid {
            // SAFETY: setuid takes a plain id; prctl with constant arguments.
            check(unsafe { libc::setuid(uid) })?;
            check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
        }
        Ok(())
    }
}

/// Makes fifod the reaper of every descendant of its processes: one that
/// leaves its process group and session (`setsid`) and outlives its parent
/// becomes fifod's child, so that fifod still finds it at stop.
pub fn become_subreaper() {
    // SAFETY: prctl with constant arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
        log::warn!(
            "cannot become the reaper of processes' descendants: {}; one that leaves its \
             process group may outlive fifod",
            io::Error::last_os_error()
        );
    }
}

/// The kernel's flag for a task in `do_exit` (`PF_EXITING`, field 9 of
/// /proc/PID/stat).
const PF_EXITING: u64 = 0x4;

/// Whether the child `pid` is dying or dead but not yet reaped. The kernel
/// flags a task as exiting before it closes its files, and signals the
/// parent only after: a process killed while fifod writes to its stdin
/// makes that write fail (EPIPE) before fifod learns of the exit, and this
/// tells the two apart from a process that closed its stdin and runs on.
pub fn is_exiting(pid: Pid) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        // Not even a zombie: it is gone.
        return true;
    };
    // After the command, which ends with the last ')': state, then the
    // flags are the seventh field.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next().unwrap_or_default();
    let flags = fields.nth(5).and_then(|f| f.parse::<u64>().ok());
    state == "Z" || state == "X" || flags.is_some_and(|f| f & PF_EXITING != 0)
}

/// At the very end: every process still fifod's child (descendants of its
/// processes that left their group, whose parent exited) gets SIGKILL, on
/// its group too, and is reaped. Returns how many there were.
pub fn kill_leftovers() -> usize {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for pid in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        // The parent's pid is the field after the command, which ends
        // with the last ')'.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
        if parent != Some(me) {
            continue;
        }
        let pid = Pid::from_raw(pid);
        log::warn!("process {pid}, left by one of fifod's processes, is still running: SIGKILL");
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        killed += 1;
    }
    killed
}

/// Marks every fd fifod inherited beyond its standard streams
/// close-on-exec, so that its children get none of them (whoever started
/// fifod may have leaked some). fifod's own fds are close-on-exec already.
pub fn keep_inherited_fds_from_children() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on fds;
    // it closes nothing that Rust objects own.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if done {
        return;
    }
    // Kernels before 5.11: flag them one by one.
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        log::warn!("cannot list inherited fds; children may inherit some");
        return;
    };
    for fd in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        if fd > 2 {
            // SAFETY: F_SETFD only sets the close-on-exec flag; a stale
            // number (the listing's own fd) fails harmlessly.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// Reaps every child that has exited, without blocking. Before a child
/// is reaped, whatever it left running in its process group is killed: its
/// zombie still holds the group's id, so the signal cannot reach a stranger,
/// and a leftover could otherwise hold its pipes open and outlive fifod.
pub fn reap() -> Vec<(Pid, Exit)> {
    use nix::sys::wait::{Id, waitid};
    let mut exited = Vec::new();
    loop {
        let peeked = waitid(
            Id::All,
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        );
        let pid = match peeked {
            Ok(WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)) => pid,
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => {
                log::error!("waiting for children failed: {}", e.desc());
                break;
            }
        };
        // Each child leads its own group (process_group(0) at spawn).
        match killpg(pid, Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH | Errno::EPERM) => {}
            Err(e) => log::warn!("cannot clean up process group {pid}: {}", e.desc()),
        }
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => exited.push((pid, Exit::Code(code))),
            Ok(WaitStatus::Signaled(pid, signal, _)) => exited.push((pid, Exit::Signal(signal))),
            Ok(_) => {}
            Err(e) => {
                log::error!("reaping {pid} failed: {}", e.desc());
                break;
            }
        }
    }
    exited
}

/// Sends `signal` to the process group led by `pid`. Only call it while the
/// leader has not been reaped: a reaped leader's pgid can be reused.
pub fn signal_group(pid: Pid, signal: Signal) {
    match killpg(pid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => log::warn!(
            "cannot send {} to process group {pid}: {}",
            signal.as_str(),
            e.desc()
        ),
    }
}

/// One configured process and its life so far.
#[derive(Debug)]
pub struct Supervised {
    pub spec: ProcessConfig,
    pub pid: Option<Pid>,
    started: Option<Instant>,
    pub restarts: u32,
    pub last_exit: Option<Exit>,
    /// The wait before the next restart.
    delay: Duration,
    pub restart_at: Option<Instant>,
}

impl Supervised {
    pub fn new(spec: ProcessConfig) -> Supervised {
        let delay = spec.restart_delay;
        Supervised {
            spec,
            pid: None,
            started: None,
            restarts: 0,
            last_exit: None,
            delay,
            restart_at: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn started(&mut self, pid: Pid, now: Instant) {
        self.pid = Some(pid);
        self.started = Some(now);
        self.restart_at = None;
    }

    /// Records an exit and, unless `stopping`, schedules the restart the
    /// policy asks for. Returns when it will be, if ever.
    pub fn exited(&mut self, how: Exit, now: Instant, stopping: bool) -> Option<Instant> {
        self.pid = None;
        self.last_exit = Some(how);
        if self
            .started
            .take()
            .is_some_and(|at| now.duration_since(at) >= STABLE_RUN)
        {
            self.delay = self.spec.restart_delay;
        }
        let wanted = match self.spec.restart {
            Restart::Never => false,
            Restart::OnFailure => !how.success(),
            Restart::Always => true,
        };
        if stopping || !wanted {
            return None;
        }
        let at = now + self.delay;
        self.restart_at = Some(at);
        self.restarts += 1;
        // Even from a restart_delay of 0, the back-off grows.
        self.delay = (self.delay * 2)
            .max(MIN_BACKOFF)
            .min(MAX_RESTART_DELAY.max(self.spec.restart_delay));
        Some(at)
    }

    /// Will this process run again (now or after a back-off)?
    pub fn has_future(&self) -> bool {
        self.pid.is_some() || self.restart_at.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(restart: Restart) -> ProcessConfig {
        ProcessConfig {
            name: "p".into(),
            command: vec!["true".into()],
            cwd: None,
            env: vec![],
            stderr: StderrMode::Merge,
            restart,
            restart_delay: Duration::from_millis(100),
            user: None,
            group: None,
            clean_env: false,
        }
    }

    #[test]
    fn back_off_doubles_up_to_the_cap_and_resets_after_a_stable_run() {
        let mut p = Supervised::new(spec(Restart::Always));
        let t0 = Instant::now();
        let mut waits = Vec::new();
        let mut now = t0;
        for _ in 0..12 {
            p.started(Pid::from_raw(1), now);
            let at = p.exited(Exit::Code(1), now, false).unwrap();
            waits.push(at - now);
            now = at;
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(
            ms,
            [
                100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000
            ]
        );
        p.started(Pid::from_raw(1), now);
        let later = now + STABLE_RUN;
        assert_eq!(
            p.exited(Exit::Code(1), later, false),
            Some(later + Duration::from_millis(100))
        );
        assert_eq!(p.restarts, 13);
    }

    #[test]
    fn policies() {
        let now = Instant::now();
        let mut never = Supervised::new(spec(Restart::Never));
        assert_eq!(never.exited(Exit::Code(1), now, false), None);
        let mut on_failure = Supervised::new(spec(Restart::OnFailure));
        assert_eq!(on_failure.exited(Exit::Code(0), now, false), None);
        assert!(
            on_failure
                .exited(Exit::Signal(Signal::SIGKILL), now, false)
                .is_some()
        );
        assert!(on_failure.exited(Exit::SpawnFailed, now, false).is_some());
        let mut always = Supervised::new(spec(Restart::Always));
        assert!(always.exited(Exit::Code(0), now, false).is_some());
        assert_eq!(
            always.exited(Exit::Code(0), now, true),
            None,
            "no restart while stopping"
        );
    }
}
