//! `fifod upgrade` (SIGUSR2): fifod executes its binary again in place,
//! same pid, handing over everything that holds bytes, so that nobody
//! connected notices and nothing is lost.
//!
//! What goes over, as fds left open across `execve`: the fd held on every
//! FIFO, both ends of every lane pipe, fan-out journals and line logs,
//! under the names the fd store uses, socket units' FIFOs under their own
//! names, running processes' pipes (`fifod/process/NAME/STREAM`), and a
//! memfd (`fifod/state`) whose first lines name the others (`fd RAW NAME`)
//! and whose rest is what the relay holds in memory (each lane's held
//! bytes, each source's line in progress, each sink's line owner) and each
//! running process's pid. `$FIFOD_HANDOVER` names the state's fd, honoured
//! only by the process whose pid `$FIFOD_HANDOVER_PID` names. The new fifod
//! reads its config again and takes them back as it would after a crash
//! (`stored.rs`), the memory state on top, and adopts the processes.
//!
//! Before it executes, the new binary must accept the config on disk
//! (`fifod check`); fifod reads every source until no lane is ahead of it
//! and lets go of what `drop-oldest` dropped at the front of pipes; it
//! does not read anything into memory after that. The loop's signals are
//! blocked across `execve` (the new image unblocks them once it handles
//! them). If `execve` fails, the handed fds are closed and fifod goes on
//! as it was.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use log::{error, info, warn};
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};

use super::{Daemon, State};
use crate::event_loop::{Interest, Token};
use crate::fdstore;
use crate::relay::{HeldBytes, LineInProgress};

impl Daemon {
    /// SIGUSR2: executes fifod again in place, everything handed over.
    pub(super) fn upgrade(&mut self) {
        match self.try_upgrade() {
            // Only returns on failure: on success, this process image is gone.
            Ok(never) => match never {},
            Err(why) => {
                error!("upgrade failed: {why}; fifod goes on as it was");
                self.upgrade_failures += 1;
                self.upgrade_error = Some(why);
                self.offer_status();
            }
        }
    }

    fn try_upgrade(&mut self) -> Result<std::convert::Infallible, String> {
        if self.state != State::Running {
            return Err("fifod is stopping".into());
        }
        if self.retiring.paths().next().is_some() || self.replaced.next_deadline().is_some() {
            return Err("a reload is still retiring outputs or stopping processes: \
                        try again once it is done"
                .into());
        }
        let program = program()?;
        // The new binary must take the config as it is on disk now: one it
        // refuses would stop fifod, with everything handed over to it lost.
        let check = std::process::Command::new(&program)
            .arg("check")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run {} check: {e}", program.display()))?;
        if !check.status.success() {
            let errors = String::from_utf8_lossy(&check.stderr);
            let first = errors.lines().next().unwrap_or("it failed");
            return Err(format!("the new binary refuses the config: {first}"));
        }
        for s in self.sources.ids() {
            self.settle(s);
            if self.relay.ahead_of(s) > 0 {
                return Err(format!("{} cannot be read now", self.sources[s].name));
            }
        }
        // The journals say so too: the new image reads them.
        self.settle_journals();
        let lanes: Vec<_> = self
            .relay
            .live_lanes()
            .map(|(l, lane)| (l, lane.sink))
            .collect();
        for (l, k) in lanes {
            if !self.let_go_unwanted(k, l) {
                return Err("a lane's pipe lost track of its bytes".into());
            }
        }
        let mut handed: Vec<(String, OwnedFd)> = Vec::new();
        let mut hand = |name: String, fd: BorrowedFd<'_>| -> Result<(), String> {
            let fd = fd
                .try_clone_to_owned()
                .map_err(|e| format!("cannot hand over {name}: {e}"))?;
            fcntl(&fd, FcntlArg::F_SETFD(FdFlag::empty()))
                .map_err(|e| format!("cannot hand over {name}: {}", e.desc()))?;
            handed.push((name, fd));
            Ok(())
        };
        for (f, fd) in self.fifo_fds().into_iter().enumerate() {
            let fifo = &self.footprint.fifos[f];
            let Some(fd) = fd else { continue };
            let name = if fifo.passed {
                fifo.name.clone()
            } else {
                fdstore::fifo_name(&fifo.name)
            };
            hand(name, fd)?;
        }
        for (l, _) in self.relay.live_lanes() {
            if let Some(pipe) = self.lane_pipes.get(l) {
                let name = self.lane_store_name(l);
                hand(name.clone(), pipe.read.as_fd())?;
                hand(name, pipe.write.as_fd())?;
            }
        }
        for (source, journal) in &self.journals {
            hand(fdstore::journal_name(source), journal.fd())?;
        }
        for (source, log) in &self.line_logs {
            hand(fdstore::line_log_name(source), log.fd())?;
        }
        for (c, child) in self.children.iter().enumerate() {
            if child.pid.is_none() {
                continue;
            }
            let ends = self.ends[c];
            let name = child.name();
            let streams = [
                ("stdin", ends.stdin.and_then(|k| self.sinks[k].fd.as_ref())),
                (
                    "stdout",
                    ends.stdout.and_then(|s| self.sources[s].fd.as_ref()),
                ),
                (
                    "stderr",
                    ends.stderr.and_then(|s| self.sources[s].fd.as_ref()),
                ),
            ];
            for (stream, fd) in streams {
                if let Some(fd) = fd {
                    hand(
                        format!("{}process/{name}/{stream}", fdstore::PREFIX),
                        fd.as_fd(),
                    )?;
                }
            }
        }
        // The list of fds goes in the state itself: in the environment it
        // could outgrow what one variable may hold.
        let state = self.memory_state(&handed)?;
        let state_fd = OwnedFd::from(state);
        fcntl(&state_fd, FcntlArg::F_SETFD(FdFlag::empty()))
            .map_err(|e| format!("cannot hand over the state: {}", e.desc()))?;
        let mut env: Vec<CString> = std::env::vars_os()
            .filter(|(k, _)| {
                !matches!(
                    k.to_str(),
                    Some(
                        "LISTEN_FDS"
                            | "LISTEN_PID"
                            | "LISTEN_FDNAMES"
                            | "FIFOD_HANDOVER"
                            | "FIFOD_HANDOVER_PID"
                            | "FIFOD_UPGRADES"
                    )
                )
            })
            .filter_map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend(v.into_vec());
                CString::new(kv).ok()
            })
            .collect();
        for (k, v) in [
            ("FIFOD_HANDOVER", state_fd.as_raw_fd().to_string()),
            ("FIFOD_HANDOVER_PID", std::process::id().to_string()),
            ("FIFOD_UPGRADES", (self.upgrades + 1).to_string()),
        ] {
            env.extend(CString::new(format!("{k}={v}")).ok());
        }
        let argv: Vec<CString> = std::env::args_os()
            .filter_map(|a| CString::new(a.into_vec()).ok())
            .collect();
        let path = CString::new(program.as_os_str().as_bytes())
            .map_err(|_| format!("{} has a NUL byte", program.display()))?;
        // Signals that come now stay pending across execve, for the new
        // image to take once it can (`run` unblocks them); one already
        // taken and not yet handled would be lost: then not now (but for
        // SIGCHLD: the new image reaps once at start).
        let signals = loop_signals();
        let _ = signals.thread_block();
        if self.events.signals_pending() {
            let _ = signals.thread_unblock();
            return Err("a signal came in meanwhile: try again".into());
        }
        info!(
            "upgrading: executing {} again with {} fds handed over",
            program.display(),
            handed.len() + 1
        );
        self.notifier.reloading();
        let Err(e) = nix::unistd::execve(&path, &argv, &env);
        let _ = signals.thread_unblock();
        let line = self.status_line();
        self.notifier.ready(&line);
        Err(format!(
            "cannot execute {}: {}",
            program.display(),
            e.desc()
        ))
    }

    /// A memfd with what the relay holds in memory (see the module's
    /// comment), by the names of lanes, routes, sources and sinks.
    fn memory_state(&self, handed: &[(String, OwnedFd)]) -> Result<File, String> {
        let fd = memfd_create("fifod-state", MFdFlags::MFD_CLOEXEC)
            .map_err(|e| format!("cannot make the state to hand over: {}", e.desc()))?;
        let mut file = File::from(fd);
        let mut text = Vec::new();
        for (name, fd) in handed {
            text.extend(format!("fd {} {name}\n", fd.as_raw_fd()).bytes());
        }
        for held in self.relay.held_in_memory() {
            let name = self.lane_store_name(held.lane);
            text.extend(
                format!(
                    "held {name} {} {}\n",
                    u8::from(held.mid_line),
                    held.bytes.len()
                )
                .bytes(),
            );
            text.extend(&held.bytes);
        }
        for line in self.relay.lines_in_progress() {
            let route = &self.config.routes[line.route].name;
            let source = &self.sources[line.source].name;
            text.extend(
                format!(
                    "line {route} {source} {} {}\n",
                    u8::from(line.long),
                    line.bytes.len()
                )
                .bytes(),
            );
            text.extend(&line.bytes);
        }
        for child in &self.children {
            if let Some(pid) = child.pid {
                text.extend(format!("process {} {pid}\n", child.name()).bytes());
            }
        }
        for (k, l) in self.relay.sink_owners() {
            text.extend(
                format!("owner {} {}\n", self.sinks[k].name, self.lane_store_name(l)).bytes(),
            );
        }
        file.write_all(&text)
            .map_err(|e| format!("cannot write the state to hand over: {e}"))?;
        Ok(file)
    }

    /// Takes back the memory state a fifod handed over before it executed
    /// this one: lanes' held bytes behind their pipes, lines in progress,
    /// line owners. What no longer fits the config is logged as lost.
    pub(super) fn take_back_memory(&mut self, fd: OwnedFd) {
        let mut text = Vec::new();
        // From its start: the handing fifod's writes left the offset at the
        // end, and the open file is shared.
        let mut file = File::from(fd);
        let read = file
            .seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_end(&mut text));
        if let Err(e) = read {
            error!("the state handed over cannot be read ({e}): what fifod held in memory is lost");
            return;
        }
        let lanes = self.lanes_by_store_name();
        let mut rest = &text[..];
        let mut held_bytes = 0;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let header = String::from_utf8_lossy(&rest[..end]).into_owned();
            rest = &rest[end + 1..];
            let fields: Vec<&str> = header.split(' ').collect();
            let len = match fields.as_slice() {
                ["held", _, _, len] | ["line", _, _, _, len] => len.parse::<usize>().unwrap_or(0),
                _ => 0,
            };
            let Some(bytes) = rest.get(..len) else {
                error!("the state handed over is cut short: what fifod held in memory is lost");
                return;
            };
            rest = &rest[len..];
            match fields.as_slice() {
                ["held", lane, mid, _] => match lanes.get(*lane) {
                    Some(&l) => {
                        self.relay.restore_held(&HeldBytes {
                            lane: l,
                            bytes: bytes.to_vec(),
                            mid_line: *mid == "1",
                        });
                        held_bytes += len;
                    }
                    None => warn!(
                        "{len} bytes held for {} are lost: the config has no such lane now",
                        lane.trim_start_matches(fdstore::PREFIX)
                    ),
                },
                ["line", route, source, long, _] => {
                    let r = self.config.routes.iter().position(|x| x.name == *route);
                    let s = self.source_named(source);
                    let restored = match (r, s) {
                        (Some(r), Some(s)) => self.relay.restore_line(&LineInProgress {
                            route: r,
                            source: s,
                            bytes: bytes.to_vec(),
                            long: *long == "1",
                        }),
                        _ => false,
                    };
                    if !restored {
                        warn!(
                            "{len} bytes of a line in progress from {source} on {route} are lost"
                        );
                    }
                }
                // The fds, taken by `activation::handover`.
                ["fd", _, _] => {}
                ["process", name, pid] => {
                    if let Ok(pid) = pid.parse::<i32>() {
                        self.adopted
                            .insert((*name).to_string(), nix::unistd::Pid::from_raw(pid));
                    }
                }
                ["owner", sink, lane] => {
                    let k = self
                        .sinks
                        .ids()
                        .into_iter()
                        .find(|&k| self.sinks[k].name == *sink);
                    if let (Some(k), Some(&l)) = (k, lanes.get(*lane)) {
                        self.relay.restore_owner(k, l);
                    }
                }
                _ => warn!("the state handed over has a line fifod does not know: {header}"),
            }
        }
        if held_bytes > 0 {
            info!("took back {held_bytes} bytes held in memory before the upgrade");
        }
    }
}

/// The signals the loop takes (`run`): blocked around `execve`.
pub fn loop_signals() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    for signal in crate::daemon::LOOP_SIGNALS {
        if let Ok(signal) = nix::sys::signal::Signal::try_from(signal) {
            set.add(signal);
        }
    }
    set
}

/// The binary to execute: the one at the path this one was started from,
/// which an upgrade replaced (`/proc/self/exe` names the old one, deleted).
fn program() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find fifod's binary: {e}"))?;
    let text = exe.to_string_lossy();
    let path = PathBuf::from(text.strip_suffix(" (deleted)").unwrap_or(&text));
    if !path.is_file() {
        return Err(format!("{} is not there", path.display()));
    }
    Ok(path)
}

impl Daemon {
    /// Adopts process `c` if the fifod before this one handed it over:
    /// it runs on, its pipes are the ones it has. False if it was not.
    pub(super) fn adopt_child(&mut self, c: usize) -> bool {
        let name = self.children[c].name().to_string();
        let Some(pid) = self.adopted.remove(&name) else {
            return false;
        };
        self.children[c].started(pid, std::time::Instant::now());
        let ends = self.ends[c];
        let mut take = |stream: &str| self.handed_processes.remove(&format!("{name}/{stream}"));
        let (stdin, stdout, stderr) = (take("stdin"), take("stdout"), take("stderr"));
        if let Some(k) = ends.stdin {
            self.set_sink_fd(k, stdin);
            self.sinks[k].intake = super::Intake::Open;
            self.flush(k);
        }
        for (s, fd) in [(ends.stdout, stdout), (ends.stderr, stderr)] {
            if let Some(s) = s {
                self.set_source_fd(s, fd);
            }
        }
        if self.foreign.remove(&name) {
            // Left by a crash: its parent is gone, so its exit comes through
            // a pidfd.
            match pidfd_open(pid) {
                Ok(fd) => {
                    if let Err(e) = self
                        .events
                        .add(fd.as_fd(), Token::Process(c), Interest::Read)
                    {
                        warn!("process {name} (pid {pid}): cannot watch its exit: {e}");
                    }
                    self.pidfds.insert(c, fd);
                }
                Err(e) => warn!(
                    "process {name} (pid {pid}): cannot watch its exit: {}",
                    e.desc()
                ),
            }
            info!("process {name} (pid {pid}) runs on after a restart: adopted");
        } else {
            info!("process {name} (pid {pid}) runs on after the upgrade");
            self.store_running(c);
        }
        true
    }

    /// A process adopted after a crash exited (its pidfd says so).
    pub(super) fn foreign_exited(&mut self, c: usize) {
        let Some(fd) = self.pidfds.remove(&c) else {
            return;
        };
        let _ = self.events.remove(fd.as_fd());
        let pid = self.children.get(c).and_then(|child| child.pid);
        if pid.is_some() {
            self.child_exited(c, pid, crate::child::Exit::Unknown);
        }
    }

    /// Processes handed over that the config no longer has: stopped as a
    /// reload stops a process it replaces (SIGTERM to the group, SIGKILL
    /// after the grace), and reaped as any.
    pub(super) fn release_unadopted(&mut self) {
        let now = std::time::Instant::now();
        for (name, pid) in std::mem::take(&mut self.adopted) {
            warn!("process {name} (pid {pid}) is no longer in the config: stopping it");
            self.replaced.stop(&name, pid, now);
        }
        self.handed_processes.clear();
    }
}

/// A pidfd for `pid`, which need not be fifod's child: readable once it
/// exits.
fn pidfd_open(pid: nix::unistd::Pid) -> nix::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd (with
    // close-on-exec set) or -1; nothing is borrowed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(nix::errno::Errno::last());
    }
    let fd = std::os::fd::RawFd::try_from(fd).map_err(|_| nix::errno::Errno::EBADF)?;
    // SAFETY: the fd was just returned by pidfd_open and is owned by nobody.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}
