//! The service manager's fd store: fds fifod hands to systemd
//! (`FDSTORE=1`, `FDNAME=`) so that the kernel objects holding its bytes
//! outlive a crash of fifod, and that it takes back from `LISTEN_FDS` when
//! it is started again.
//!
//! What is stored, under names that begin with `fifod/` (socket units'
//! names never do: they are `[fifo.NAME]` names):
//! - `fifod/fifo/NAME`: the fd fifod holds on each FIFO it manages. While
//!   systemd holds it, the pipe lives: a writer neither gets EPIPE nor loses
//!   what it wrote, a reader gets no EOF, until the next fifod takes over.
//! - `fifod/lane/ROUTE/SINK`: both ends of a byte lane's private pipe, from
//!   the first time it holds bytes for a slow sink.
//! - `fifod/tee/SOURCE`: a fanned-out source's journal, a memfd that says
//!   how far each lane's pipe is ahead of the source (`daemon::journal`).
//! - `fifod/lines/SOURCE`: the log of a source of line routes, a memfd with
//!   its line in progress and a journal (`daemon::line_log`).
//! - `fifod/running/NAME/PID/STREAM`: a running process's pipes (its stdin's
//!   write end, its stdout's and stderr's read ends): after a crash the
//!   process runs on (the unit's `KillMode=process`) and is adopted.
//!
//! `fifod upgrade` hands the same over across `execve`, with two more kinds
//! of names that are never stored: `fifod/process/NAME/STREAM` (a running
//! process's pipes) and `fifod/state` (`daemon::upgrade`).
//!
//! The store is used only when the service manager says it has one
//! (`$FDSTORE`, set by systemd 254 and later from `FileDescriptorStoreMax=`,
//! and by the shipped unit for older ones), and it is emptied by a clean
//! stop. An fd is stored before fifod puts a byte into what it opens, so
//! that no byte is ever held where a crash could take it.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use log::{debug, warn};
use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};

/// What every stored name begins with.
pub const PREFIX: &str = "fifod/";
/// The longest name systemd accepts (`FDNAME_MAX`).
const NAME_MAX: usize = 255;
/// How long a message may wait for room in the manager's queue.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// What an upgrade hands the relay's memory over under (never stored).
pub const STATE: &str = "fifod/state";

/// The name a managed FIFO's fd is stored under.
pub fn fifo_name(fifo: &str) -> String {
    format!("{PREFIX}fifo/{fifo}")
}

/// The name the pipe of route `route`'s lane into `sink` is stored under.
pub fn lane_name(route: &str, sink: &str) -> String {
    format!("{PREFIX}lane/{route}/{sink}")
}

/// The name a running process's `stream` pipe is stored under.
pub fn running_name(process: &str, pid: i32, stream: &str) -> String {
    format!("{PREFIX}running/{process}/{pid}/{stream}")
}

/// The name the fan-out journal of source `source` is stored under.
pub fn journal_name(source: &str) -> String {
    format!("{PREFIX}tee/{source}")
}

/// The name the line log of source `source` is stored under.
pub fn line_log_name(source: &str) -> String {
    format!("{PREFIX}lines/{source}")
}

/// fds passed back by the service manager that fifod stored before.
#[derive(Debug, Default)]
pub struct Stored {
    pub fifos: HashMap<String, OwnedFd>,
    /// Fan-out journals (memfds), by source name.
    pub journals: HashMap<String, OwnedFd>,
    /// Line logs (memfds), by source name.
    pub line_logs: HashMap<String, OwnedFd>,
    /// What the relay held in memory, handed over by `fifod upgrade`.
    pub state: Option<OwnedFd>,
    /// Processes' pipes handed over by `fifod upgrade`, by `NAME/stdin`,
    /// `NAME/stdout` or `NAME/stderr`.
    pub processes: HashMap<String, OwnedFd>,
    /// Running processes' pipes stored before a crash: (process name, pid,
    /// stream, fd).
    pub running: Vec<(String, i32, String, OwnedFd)>,
    /// Each lane's pipe, as (read end, write end).
    pub lanes: HashMap<String, (OwnedFd, OwnedFd)>,
    /// Anything else under fifod's prefix: not fifod's to use any more.
    pub stale: Vec<String>,
}

impl Stored {
    /// Sorts fds the manager passed under fifod's own names.
    pub fn sort(passed: Vec<(String, OwnedFd)>) -> Stored {
        let mut stored = Stored::default();
        let mut lane_ends: HashMap<String, Vec<OwnedFd>> = HashMap::new();
        for (name, fd) in passed {
            if name == STATE {
                stored.state = Some(fd);
            } else if let Some((process, pid, stream)) = name
                .strip_prefix(PREFIX)
                .and_then(|n| n.strip_prefix("running/"))
                .and_then(|n| {
                    let (rest, stream) = n.rsplit_once('/')?;
                    let (process, pid) = rest.rsplit_once('/')?;
                    Some((process.to_string(), pid.parse().ok()?, stream.to_string()))
                })
            {
                stored.running.push((process, pid, stream, fd));
            } else if let Some(stream) = name
                .strip_prefix(PREFIX)
                .and_then(|n| n.strip_prefix("process/"))
            {
                stored.processes.insert(stream.to_string(), fd);
            } else if let Some(fifo) = name
                .strip_prefix(PREFIX)
                .and_then(|n| n.strip_prefix("fifo/"))
            {
                if stored.fifos.insert(fifo.to_string(), fd).is_some() {
                    stored.stale.push(name);
                }
            } else if let Some(source) = name
                .strip_prefix(PREFIX)
                .and_then(|n| n.strip_prefix("tee/"))
            {
                if stored.journals.insert(source.to_string(), fd).is_some() {
                    stored.stale.push(name);
                }
            } else if let Some(source) = name
                .strip_prefix(PREFIX)
                .and_then(|n| n.strip_prefix("lines/"))
            {
                if stored.line_logs.insert(source.to_string(), fd).is_some() {
                    stored.stale.push(name);
                }
            } else if name.starts_with(&format!("{PREFIX}lane/")) {
                lane_ends.entry(name).or_default().push(fd);
            } else {
                stored.stale.push(name);
            }
        }
        for (name, ends) in lane_ends {
            match pipe_ends(ends) {
                Some(ends) => {
                    stored.lanes.insert(name, ends);
                }
                None => stored.stale.push(name),
            }
        }
        stored
    }
}

/// The read and the write end among two fds of one pipe.
fn pipe_ends(mut ends: Vec<OwnedFd>) -> Option<(OwnedFd, OwnedFd)> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    if ends.len() != 2 {
        return None;
    }
    let mode = |fd: &OwnedFd| {
        fcntl(fd, FcntlArg::F_GETFL).map(|f| OFlag::from_bits_truncate(f) & OFlag::O_ACCMODE)
    };
    let second = ends.pop()?;
    let first = ends.pop()?;
    match (mode(&first).ok()?, mode(&second).ok()?) {
        (OFlag::O_RDONLY, OFlag::O_WRONLY) => Some((first, second)),
        (OFlag::O_WRONLY, OFlag::O_RDONLY) => Some((second, first)),
        _ => None,
    }
}

/// fifod's side of the fd store.
#[derive(Debug)]
pub struct FdStore {
    /// `$NOTIFY_SOCKET`, and a blocking socket (with a timeout) to send on:
    /// a store message must arrive before fifod relies on it.
    socket: Option<(OsString, UnixDatagram)>,
    /// How many fds the manager keeps (`$FDSTORE`).
    capacity: usize,
    /// Names stored, with the number of fds under each.
    names: HashMap<String, usize>,
    /// Names that could not be stored (logged once each).
    refused: HashSet<String>,
    /// A full store was logged (once).
    full_warned: bool,
}

impl FdStore {
    /// A store if the service manager offers one: `$NOTIFY_SOCKET` and a
    /// `$FDSTORE` above zero.
    pub fn from_env() -> FdStore {
        let capacity = std::env::var("FDSTORE")
            .ok()
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let socket = std::env::var_os("NOTIFY_SOCKET")
            .filter(|s| !s.is_empty() && capacity > 0)
            .and_then(|path| {
                let socket = UnixDatagram::unbound()
                    .and_then(|s| s.set_write_timeout(Some(SEND_TIMEOUT)).map(|()| s));
                match socket {
                    Ok(socket) => Some((path, socket)),
                    Err(e) => {
                        warn!("cannot make a socket for the service manager's fd store: {e}");
                        None
                    }
                }
            });
        FdStore {
            socket,
            capacity,
            names: HashMap::new(),
            refused: HashSet::new(),
            full_warned: false,
        }
    }

    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// How many fds are stored now.
    fn used(&self) -> usize {
        self.names.values().sum()
    }

    /// Records that `name` is in the store already (the manager passed it
    /// back), holding `count` fds.
    pub fn known(&mut self, name: &str, count: usize) {
        self.names.insert(name.to_string(), count);
    }

    /// Stores `fds` under `name`, replacing what was there. True once the
    /// manager has the message; false when there is no store, no room, or
    /// the message could not be sent (the caller then holds its bytes
    /// elsewhere).
    pub fn store(&mut self, name: &str, fds: &[BorrowedFd<'_>]) -> bool {
        if !self.enabled() {
            return false;
        }
        if name.len() > NAME_MAX {
            self.refuse(name, "its name is longer than systemd allows");
            return false;
        }
        let replaced = self.names.get(name).copied().unwrap_or(0);
        if self.used() - replaced + fds.len() > self.capacity {
            self.refuse(
                name,
                &format!(
                    "the store is full ({} fds, FDSTORE={}); raise FileDescriptorStoreMax=",
                    self.used(),
                    self.capacity
                ),
            );
            return false;
        }
        if replaced > 0 {
            self.remove(name);
        }
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let message = format!("FDSTORE=1\nFDNAME={name}\nFDPOLL=0\n");
        match self.send(message.as_bytes(), &raw) {
            Ok(()) => {
                debug!("stored {name} with the service manager");
                self.names.insert(name.to_string(), fds.len());
                self.refused.remove(name);
                true
            }
            Err(e) => {
                // A manager that does not take one message will not take
                // the next: fifod goes on without a store rather than wait
                // on each.
                warn!(
                    "the service manager's fd store does not answer ({}): fifod no longer \
                     uses it, and what it holds from now on would not outlive a crash",
                    e.desc()
                );
                self.socket = None;
                false
            }
        }
    }

    /// Takes `name` out of the store.
    pub fn remove(&mut self, name: &str) {
        if self.names.remove(name).is_none() || !self.enabled() {
            return;
        }
        let message = format!("FDSTOREREMOVE=1\nFDNAME={name}\n");
        match self.send(message.as_bytes(), &[]) {
            Ok(()) => debug!("took {name} out of the service manager's store"),
            Err(e) => warn!(
                "cannot take {name} out of the service manager's store: {}",
                e.desc()
            ),
        }
    }

    /// Takes `name` out of the store, whether or not this fifod stored it
    /// (left over from before a restart).
    pub fn forget(&mut self, name: &str) {
        self.names.insert(name.to_string(), 0);
        self.remove(name);
    }

    /// Empties the store and stops using it: a clean stop leaves nothing
    /// in it.
    pub fn close(&mut self) {
        let names: Vec<String> = self.names.keys().cloned().collect();
        for name in names {
            self.remove(&name);
        }
        self.socket = None;
    }

    fn refuse(&mut self, name: &str, why: &str) {
        // Once per name, and for a full store once in all: a large config
        // would otherwise log a line for each of thousands of names.
        let full = why.starts_with("the store is full");
        if self.refused.insert(name.to_string()) && !(full && self.full_warned) {
            self.full_warned |= full;
            warn!(
                "cannot keep {name} in the service manager's fd store ({why}): \
                 what it holds would not outlive a crash of fifod"
            );
        }
    }

    fn send(&self, message: &[u8], fds: &[RawFd]) -> nix::Result<()> {
        let Some((path, socket)) = &self.socket else {
            return Ok(());
        };
        let address = match path.as_bytes().strip_prefix(b"@") {
            Some(name) => UnixAddr::new_abstract(name)?,
            None => UnixAddr::new(path.as_os_str())?,
        };
        let iov = [IoSlice::new(message)];
        let rights = [ControlMessage::ScmRights(fds)];
        let control: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
        loop {
            match sendmsg(
                socket.as_raw_fd(),
                &iov,
                control,
                MsgFlags::MSG_NOSIGNAL,
                Some(&address),
            ) {
                Ok(n) if n == message.len() => return Ok(()),
                Ok(_) => return Err(nix::errno::Errno::EMSGSIZE),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }
}
