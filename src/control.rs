//! The control socket: the daemon answers each connection with one JSON
//! document describing its state, and `fifod status` renders it.
//!
//! The protocol is deliberately one-way: connect, read to EOF. The document's
//! field names are stable (README lists them); `version` changes if they do.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::sys::socket::getsockopt;
use nix::sys::socket::sockopt::PeerCredentials;
use serde::{Deserialize, Serialize};

pub mod metrics;
pub mod peers;

/// Bumped when a field changes meaning or goes away.
pub const STATUS_VERSION: u32 = 1;
/// At most this many answers are being written at once; while they are,
/// fifod accepts no other connection (it waits in the listen queue).
const MAX_CLIENTS: usize = 16;
/// A client that reads nothing of its answer for this long is dropped, so
/// that clients that never read hold a slot no longer than that.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub version: u32,
    pub pid: u32,
    pub uptime_seconds: f64,
    pub dir: String,
    /// `running`, `draining` or `stopping`.
    pub state: String,
    /// The last reload's outcome; `None` before the first. Absent from a
    /// daemon older than the field, hence the default.
    #[serde(default)]
    pub last_reload: Option<ReloadStatus>,
    /// Reload requests (SIGHUPs) the daemon took so far.
    #[serde(default)]
    pub reload_requests: u64,
    /// Upgrades (`fifod upgrade`, SIGUSR2) since fifod was started.
    #[serde(default)]
    pub upgrades: u64,
    /// Upgrades that failed since the last one that worked, and why the
    /// last of them did.
    #[serde(default)]
    pub upgrade_failures: u64,
    #[serde(default)]
    pub upgrade_error: Option<String>,
    pub fifos: Vec<FifoStatus>,
    pub processes: Vec<ProcessStatus>,
    pub routes: Vec<RouteStatus>,
    /// Processes whose open files `fifod status` could not look at
    /// (another user's, to a caller without privilege): the FIFOs' `peers`
    /// leave theirs out. Set by `fifod status` along with `peers`; the
    /// daemon's answer has no such field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes_not_visible: Option<u64>,
}

/// How the last reload ended. A failed one stands until a reload succeeds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReloadStatus {
    /// When it ended, in seconds since the Unix epoch.
    pub at: u64,
    pub ok: bool,
    /// Why it failed: the first line of the config's errors (which names
    /// file, line, column and key), or the reason it could not be applied;
    /// `None` when it succeeded.
    pub error: Option<String>,
    /// Every line of why it failed; empty when it succeeded.
    #[serde(default)]
    pub errors: Vec<String>,
    /// What it changed, as the log says it (`added fifo b`, ...).
    #[serde(default)]
    pub changes: Vec<String>,
    /// It answers the first `answers` reload requests (`reload_requests`):
    /// it read the file after each of them.
    #[serde(default)]
    pub answers: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FifoStatus {
    pub name: String,
    pub path: String,
    pub mode: String,
    /// `input`, `output` or `unrouted`.
    pub role: String,
    /// The processes other than fifod that have it open, as far as the
    /// caller of `fifod status` may see. `None` where nobody looked: the
    /// daemon answers without them, and `fifod status` fills them in from
    /// /proc (see [`peers`]). Older daemons answered `null` here too.
    #[serde(default, deserialize_with = "peers::deserialize")]
    pub peers: Option<Vec<Peer>>,
    /// Bytes fifod read from it (inputs) or wrote into it (outputs).
    pub bytes: u64,
    /// Bytes waiting in its pipe now.
    pub queued: u64,
}

/// A process that has a FIFO open.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    /// Its `/proc/PID/comm`: the program's name, at most 15 bytes.
    pub command: String,
    pub mode: Access,
}

/// How a process opened a FIFO (of all its fds for it, together).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

impl Access {
    pub fn reads(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }

    pub fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }

    /// Both kinds of access in one.
    pub fn with(self, other: Access) -> Access {
        if self == other {
            self
        } else {
            Access::ReadWrite
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessStatus {
    pub name: String,
    pub command: Vec<String>,
    pub pid: Option<i32>,
    /// `running`, `restarting` (back-off under way) or `stopped`.
    pub state: String,
    pub restarts: u32,
    pub last_exit: Option<String>,
    /// Bytes written to its stdin and read from its stdout (and stderr).
    pub bytes_in: u64,
    pub bytes_out: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RouteStatus {
    pub index: usize,
    /// Its `name`, else `route[N]`; absent from a daemon older than the
    /// field.
    #[serde(default)]
    pub name: String,
    pub from: Vec<String>,
    pub to: Vec<String>,
    /// `bytes` or `lines`.
    pub framing: String,
    pub when_full: String,
    pub eof: String,
    /// Lines longer than `max_line`, passed on in pieces (line routes).
    pub long_lines: u64,
    pub sinks: Vec<SinkStatus>,
}

impl RouteStatus {
    /// What logs and tables call the route: its `name`, else `route[N]`
    /// (a daemon older than the field sends no name).
    pub fn label(&self) -> String {
        if self.name.is_empty() {
            format!("route[{}]", self.index)
        } else {
            self.name.clone()
        }
    }
}

/// One sink of one route. Always `produced = delivered + held + dropped`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SinkStatus {
    pub sink: String,
    pub produced: u64,
    pub delivered: u64,
    pub held: u64,
    pub dropped: u64,
    /// The same in lines, on line routes.
    pub lines: Option<LineCounts>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct LineCounts {
    pub produced: u64,
    pub delivered: u64,
    pub held: u64,
    pub dropped: u64,
}

/// An answer being written to one client.
#[derive(Debug)]
struct Client {
    stream: UnixStream,
    /// One document, shared by every client accepted in the same pass.
    answer: Rc<[u8]>,
    written: usize,
    /// The client is dropped if it reads nothing more by then.
    deadline: Instant,
}

/// The listening socket and the answers under way.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    clients: Vec<Option<Client>>,
    /// Members of this group may ask too (`daemon.control_group`).
    group: Option<u32>,
}

/// How far an answer got.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Watch the client for writability.
    Write(usize),
    /// The client is done: stop watching it (its fd is closed).
    Done(usize),
}

impl ControlServer {
    pub fn new(listener: UnixListener, group: Option<u32>) -> ControlServer {
        ControlServer {
            listener,
            clients: (0..MAX_CLIENTS).map(|_| None).collect(),
            group,
        }
    }

    pub fn listener_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    pub fn client_fd(&self, slot: usize) -> Option<BorrowedFd<'_>> {
        self.clients.get(slot)?.as_ref().map(|c| c.stream.as_fd())
    }

    /// Whether a new connection can be taken now.
    pub fn has_room(&self) -> bool {
        self.clients.iter().any(Option::is_none)
    }

    /// Accepts every waiting connection there is room for, and starts
    /// answering each with the document `answer` makes (made once, and
    /// only if a connection came). A peer that is neither root nor fifod's
    /// own user is refused. Returns the slots to watch for writability.
    pub fn accept_all(&mut self, answer: impl FnOnce() -> Status) -> io::Result<Vec<usize>> {
        let mut answer = Some(answer);
        let mut document: Option<Rc<[u8]>> = None;
        let mut watch = Vec::new();
        while let Some(slot) = self.clients.iter().position(Option::is_none) {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) => return Err(e),
            };
            if !peer_allowed(&stream, self.group) {
                continue;
            }
            stream.set_nonblocking(true)?;
            let document = match (&document, answer.take()) {
                (Some(d), _) => Rc::clone(d),
                (None, Some(make)) => {
                    let mut bytes = serde_json::to_vec(&make()).map_err(io::Error::other)?;
                    bytes.push(b'\n');
                    let made: Rc<[u8]> = bytes.into();
                    document = Some(Rc::clone(&made));
                    made
                }
                (None, None) => unreachable!("the document is made with the first answer"),
            };
            self.clients[slot] = Some(Client {
                stream,
                answer: document,
                written: 0,
                deadline: Instant::now() + CLIENT_TIMEOUT,
            });
            if let Progress::Write(slot) = self.write(slot) {
                watch.push(slot);
            }
        }
        Ok(watch)
    }

    /// Writes more of a client's answer.
    pub fn write(&mut self, slot: usize) -> Progress {
        let Some(client) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return Progress::Done(slot);
        };
        loop {
            match client.stream.write(&client.answer[client.written..]) {
                Ok(n) => {
                    client.written += n;
                    client.deadline = Instant::now() + CLIENT_TIMEOUT;
                    if client.written == client.answer.len() {
                        self.clients[slot] = None;
                        return Progress::Done(slot);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Write(slot),
                Err(_) => {
                    self.clients[slot] = None;
                    return Progress::Done(slot);
                }
            }
        }
    }

    /// The earliest client deadline, if any client is waiting.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.iter().flatten().map(|c| c.deadline).min()
    }

    /// The clients past their deadline.
    pub fn expired(&self, now: Instant) -> Vec<usize> {
        (0..self.clients.len())
            .filter(|&slot| {
                self.clients[slot]
                    .as_ref()
                    .is_some_and(|c| c.deadline <= now)
            })
            .collect()
    }

    /// Closes a client's connection.
    pub fn close(&mut self, slot: usize) {
        if let Some(client) = self.clients.get_mut(slot) {
            *client = None;
        }
    }
}

/// Why `fifod status` could not get an answer.
#[derive(Debug)]
pub enum QueryError {
    /// Nothing listens at the socket: the daemon is not running.
    NotRunning(String),
    Failed(String),
}

/// Whether the peer of `stream` may read fifod's status: root, fifod's
/// own user, or a member of `group` (the socket's mode says so too; this
/// holds if it is widened).
fn peer_allowed(stream: &UnixStream, group: Option<u32>) -> bool {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let Ok(peer) = getsockopt(stream, PeerCredentials) else {
        return false;
    };
    if peer.uid() == 0 || peer.uid() == nix::unistd::geteuid().as_raw() {
        return true;
    }
    group.is_some_and(|gid| peer.gid() == gid || in_group(peer.pid(), gid))
}

/// Whether process `pid` has `gid` among its supplementary groups.
fn in_group(pid: libc::pid_t, gid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|groups| groups.split_whitespace().any(|g| g.parse() == Ok(gid)))
}

/// Connects to the control socket at `path` and reads the daemon's answer.
pub fn query(path: &Path, timeout: Duration) -> Result<Status, QueryError> {
    query_peer(path, timeout).map(|(status, _)| status)
}

/// [`query`], and the pid of the process that answered, as this process
/// sees it (the socket's peer credentials; the document's `pid` is the
/// daemon's own view, which differs in another pid namespace).
pub fn query_peer(path: &Path, timeout: Duration) -> Result<(Status, i32), QueryError> {
    let not_running = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
        )
    };
    // Connect by name from inside the directory: a socket address holds
    // only 108 bytes, and the path may be longer.
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => (dir, name),
        _ => {
            return Err(QueryError::Failed(format!(
                "{} is not a socket path",
                path.display()
            )));
        }
    };
    if let Err(e) = std::env::set_current_dir(dir) {
        return Err(if not_running(&e) {
            QueryError::NotRunning(format!("{} does not exist", dir.display()))
        } else {
            QueryError::Failed(format!("{}: {e}", dir.display()))
        });
    }
    let mut stream = UnixStream::connect(name).map_err(|e| {
        if not_running(&e) {
            QueryError::NotRunning(format!("nothing listens at {}", path.display()))
        } else {
            QueryError::Failed(format!("{}: {e}", path.display()))
        }
    })?;
    let fail = |e: io::Error| QueryError::Failed(format!("{}: {e}", path.display()));
    stream.set_read_timeout(Some(timeout)).map_err(fail)?;
    let peer = getsockopt(&stream, PeerCredentials)
        .map_err(|e| fail(e.into()))?
        .pid();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(fail)?;
    let status = serde_json::from_slice(&answer)
        .map_err(|e| QueryError::Failed(format!("{}: not a status answer: {e}", path.display())))?;
    Ok((status, peer))
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{value:.1} {unit}")
}

fn human_duration(seconds: f64) -> String {
    let total = seconds as u64;
    let (d, h, m, s) = (
        total / 86400,
        total / 3600 % 24,
        total / 60 % 60,
        total % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// `at` (seconds since the Unix epoch) in local time, such as
/// `2024-05-01 14:03:27 CEST`.
pub fn human_time(at: u64) -> String {
    let fallback = || format!("{at} s after the epoch");
    let Ok(t) = libc::time_t::try_from(at) else {
        return fallback();
    };
    // SAFETY: `tm` is plain data, for which all zeroes is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r writes only
    // through the second.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return fallback();
    }
    let mut text = [0u8; 64];
    // SAFETY: strftime writes at most `text.len()` bytes into `text`, from a
    // NUL-terminated format and a `tm` that localtime_r filled.
    let n = unsafe {
        libc::strftime(
            text.as_mut_ptr().cast(),
            text.len(),
            c"%Y-%m-%d %H:%M:%S %Z".as_ptr(),
            &tm,
        )
    };
    if n == 0 {
        return fallback();
    }
    String::from_utf8_lossy(&text[..n]).into_owned()
}

/// The line that says how the last reload ended.
fn reload_line(last: &ReloadStatus) -> String {
    let when = human_time(last.at);
    match (&last.error, last.ok) {
        (_, true) => format!("reloaded at {when}"),
        (Some(why), false) => {
            format!("reload failed at {when}: {why}; the running config stays in force")
        }
        (None, false) => format!("reload failed at {when}; the running config stays in force"),
    }
}

/// Lays out rows as columns separated by two spaces.
pub(crate) fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<String>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:w$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.iter().map(ToString::to_string).collect());
    for row in rows {
        line(row.clone());
    }
}

/// The human-readable form of a status answer.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "fifod pid {}, {} for {}, dir {}",
        status.pid,
        status.state,
        human_duration(status.uptime_seconds),
        status.dir
    );
    if let Some(last) = &status.last_reload {
        out.push_str(&reload_line(last));
        out.push('\n');
    }
    if !status.fifos.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = status
            .fifos
            .iter()
            .map(|f| {
                vec![
                    f.name.clone(),
                    f.path.clone(),
                    f.mode.clone(),
                    f.role.clone(),
                    peers::cell(f.peers.as_deref()),
                    human_bytes(f.bytes),
                    human_bytes(f.queued),
                ]
            })
            .collect();
        table(
            &mut out,
            &["FIFO", "PATH", "MODE", "ROLE", "PEERS", "BYTES", "QUEUED"],
            &rows,
        );
        match status.processes_not_visible {
            Some(1) => out.push_str("(PEERS: 1 process not visible to this user)\n"),
            Some(n) if n > 1 => {
                let _ = writeln!(out, "(PEERS: {n} processes not visible to this user)");
            }
            _ => {}
        }
    }
    if !status.processes.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = status
            .processes
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.pid.map_or("-".into(), |pid| pid.to_string()),
                    p.state.clone(),
                    p.restarts.to_string(),
                    p.last_exit.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        table(
            &mut out,
            &["PROCESS", "PID", "STATE", "RESTARTS", "LAST EXIT"],
            &rows,
        );
    }
    if !status.routes.is_empty() {
        out.push('\n');
        let mut rows = Vec::new();
        for r in &status.routes {
            for s in &r.sinks {
                let lines = |f: fn(&LineCounts) -> u64| {
                    s.lines.as_ref().map_or(String::new(), |l| match f(l) {
                        1 => " (1 line)".to_string(),
                        n => format!(" ({n} lines)"),
                    })
                };
                rows.push(vec![
                    r.label(),
                    r.from.join(","),
                    s.sink.clone(),
                    r.framing.clone(),
                    format!("{}{}", human_bytes(s.delivered), lines(|l| l.delivered)),
                    format!("{}{}", human_bytes(s.held), lines(|l| l.held)),
                    format!("{}{}", human_bytes(s.dropped), lines(|l| l.dropped)),
                ]);
            }
        }
        table(
            &mut out,
            &[
                "ROUTE",
                "FROM",
                "TO",
                "FRAMING",
                "DELIVERED",
                "HELD",
                "DROPPED",
            ],
            &rows,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lays_out_every_section() {
        let status = Status {
            version: STATUS_VERSION,
            pid: 42,
            uptime_seconds: 3725.0,
            dir: "/run/fifod".into(),
            state: "running".into(),
            last_reload: None,
            reload_requests: 0,
            upgrades: 0,
            upgrade_failures: 0,
            upgrade_error: None,
            fifos: vec![FifoStatus {
                name: "in".into(),
                path: "/run/fifod/in".into(),
                mode: "0620".into(),
                role: "input".into(),
                peers: None,
                bytes: 2048,
                queued: 0,
            }],
            processes: vec![ProcessStatus {
                name: "upper".into(),
                command: vec!["tr".into()],
                pid: Some(7),
                state: "running".into(),
                restarts: 2,
                last_exit: Some("exited with status 1".into()),
                bytes_in: 1,
                bytes_out: 1,
            }],
            routes: vec![RouteStatus {
                index: 0,
                name: "route[0]".into(),
                from: vec!["in".into()],
                to: vec!["upper".into()],
                framing: "lines".into(),
                when_full: "block".into(),
                eof: "hold".into(),
                long_lines: 0,
                sinks: vec![SinkStatus {
                    sink: "upper".into(),
                    produced: 10,
                    delivered: 8,
                    held: 2,
                    dropped: 0,
                    lines: Some(LineCounts {
                        produced: 3,
                        delivered: 2,
                        held: 1,
                        dropped: 0,
                    }),
                }],
            }],
            processes_not_visible: None,
        };
        let text = render(&status);
        assert_eq!(
            text,
            "fifod pid 42, running for 1h 2m, dir /run/fifod\n\
             \n\
             FIFO  PATH           MODE  ROLE   PEERS  BYTES    QUEUED\n\
             in    /run/fifod/in  0620  input  ?      2.0 KiB  0 B\n\
             \n\
             PROCESS  PID  STATE    RESTARTS  LAST EXIT\n\
             upper    7    running  2         exited with status 1\n\
             \n\
             ROUTE     FROM  TO     FRAMING  DELIVERED      HELD          DROPPED\n\
             route[0]  in    upper  lines    8 B (2 lines)  2 B (1 line)  0 B (0 lines)\n"
        );
        let json = serde_json::to_string(&status).unwrap();
        let back: Status = serde_json::from_str(&json).unwrap();
        assert_eq!(back, status);
    }

    fn bare_status(last_reload: Option<ReloadStatus>) -> Status {
        Status {
            version: STATUS_VERSION,
            pid: 42,
            uptime_seconds: 5.0,
            dir: "/run/fifod".into(),
            state: "running".into(),
            last_reload,
            reload_requests: 0,
            upgrades: 0,
            upgrade_failures: 0,
            upgrade_error: None,
            fifos: Vec::new(),
            processes: Vec::new(),
            routes: Vec::new(),
            processes_not_visible: None,
        }
    }

    #[test]
    fn render_says_how_the_last_reload_ended() {
        let at = 1_714_567_890;
        let when = human_time(at);
        let failed = bare_status(Some(ReloadStatus {
            at,
            ok: false,
            error: Some("f.toml:6:8: fifo.out.mode: invalid mode".into()),
            errors: vec!["f.toml:6:8: fifo.out.mode: invalid mode".into()],
            changes: Vec::new(),
            answers: 1,
        }));
        assert_eq!(
            render(&failed),
            format!(
                "fifod pid 42, running for 5s, dir /run/fifod\n\
                 reload failed at {when}: f.toml:6:8: fifo.out.mode: invalid mode; \
                 the running config stays in force\n"
            )
        );
        let ok = bare_status(Some(ReloadStatus {
            at,
            ok: true,
            error: None,
            errors: Vec::new(),
            changes: vec!["added fifo b".into()],
            answers: 2,
        }));
        assert_eq!(
            render(&ok),
            format!("fifod pid 42, running for 5s, dir /run/fifod\nreloaded at {when}\n")
        );
        assert_eq!(
            render(&bare_status(None)),
            "fifod pid 42, running for 5s, dir /run/fifod\n"
        );
    }

    #[test]
    fn last_reload_is_null_before_a_reload_and_may_be_absent() {
        let json = serde_json::to_value(bare_status(None)).unwrap();
        assert_eq!(json["last_reload"], serde_json::Value::Null);
        let failed = bare_status(Some(ReloadStatus {
            at: 7,
            ok: false,
            error: Some("why".into()),
            errors: vec!["why".into()],
            changes: Vec::new(),
            answers: 3,
        }));
        assert_eq!(
            serde_json::to_value(&failed).unwrap()["last_reload"],
            serde_json::json!({
                "at": 7, "ok": false, "error": "why", "errors": ["why"], "changes": [], "answers": 3
            })
        );
        // A daemon from before the fields answers without them.
        let mut older = json;
        older.as_object_mut().unwrap().remove("last_reload");
        older.as_object_mut().unwrap().remove("reload_requests");
        let back: Status = serde_json::from_value(older).unwrap();
        assert_eq!(back, bare_status(None));
    }

    #[test]
    fn human_time_is_a_date_and_a_time_of_day() {
        let text = human_time(1_714_567_890);
        let (date, rest) = text.split_at(10);
        assert!(
            date.starts_with("2024-05-01") || date.starts_with("2024-05-02"),
            "{text}"
        );
        let time = rest.strip_prefix(' ').unwrap_or_else(|| panic!("{text}"));
        assert!(
            time.len() >= 8
                && time.as_bytes()[2] == b':'
                && time.as_bytes()[5] == b':'
                && time[..8].bytes().filter(u8::is_ascii_digit).count() == 6,
            "{text}"
        );
    }
}
