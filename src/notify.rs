//! Telling the service manager how fifod is doing (`sd_notify`): readiness,
//! reloads, the stop, a one-line status and the watchdog.
//!
//! Everything here is a no-op unless `$NOTIFY_SOCKET` is set. The messages
//! are the `sd-notify` crate's; they are sent here on a non-blocking socket
//! (the crate's own `notify` blocks while the manager's queue is full, which
//! would stall every relay). This module decides *when* to speak:
//! `STATUS=` only when the line changed and at most once a second, and
//! `WATCHDOG=1` at half of `$WATCHDOG_USEC`. Neither needs a timer while
//! nothing happens, except the watchdog, which asked for one.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use log::{debug, warn};
use sd_notify::NotifyState;

/// The shortest interval between two `STATUS=` messages.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Notifier {
    /// `$NOTIFY_SOCKET`, and the socket messages are sent from.
    socket: Option<(OsString, UnixDatagram)>,
    /// How often to ping the watchdog, and when next.
    watchdog: Option<(Duration, Instant)>,
    /// The last `STATUS=` sent, and when.
    status: String,
    status_sent: Option<Instant>,
    /// A changed status waits until then (rate limit).
    status_due: Option<Instant>,
    /// Whether the last send failed, so that a dead socket is logged once.
    failing: bool,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` and `$WATCHDOG_USEC`/`$WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET")
            .filter(|s| !s.is_empty())
            .and_then(|path| match unbound_nonblocking() {
                Ok(socket) => Some((path, socket)),
                Err(e) => {
                    warn!("cannot make a socket to notify the service manager: {e}");
                    None
                }
            });
        let enabled = socket.is_some();
        let watchdog = sd_notify::watchdog_enabled()
            .filter(|_| enabled)
            .filter(|period| !period.is_zero())
            .map(|period| {
                let every = period / 2;
                (every, Instant::now() + every)
            });
        Notifier {
            socket,
            watchdog,
            status: String::new(),
            status_sent: None,
            status_due: None,
            failing: false,
        }
    }

    fn send(&mut self, states: &[NotifyState<'_>]) {
        let Some((path, socket)) = &self.socket else {
            return;
        };
        let mut message = String::new();
        for state in states {
            let _ = writeln!(message, "{state}");
        }
        match send_to(socket, path, message.as_bytes()) {
            Ok(()) => self.failing = false,
            Err(e) if !self.failing => {
                warn!("cannot notify the service manager: {e}");
                self.failing = true;
            }
            Err(e) => debug!("cannot notify the service manager: {e}"),
        }
    }

    /// Start-up or a reload is complete; `status` says what runs.
    pub fn ready(&mut self, status: &str) {
        self.status = status.to_string();
        self.status_sent = Some(Instant::now());
        self.status_due = None;
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A reload begins.
    pub fn reloading(&mut self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(e) => {
                warn!("cannot read the monotonic clock: {e}");
                self.send(&[NotifyState::Reloading]);
            }
        }
    }

    /// Shutdown begins.
    pub fn stopping(&mut self, status: &str) {
        self.status = status.to_string();
        self.status_due = None;
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// Whether a status line should be built now: the rate limit allows it
    /// (otherwise it is looked at again once it does; see
    /// [`Notifier::next_deadline`]).
    pub fn status_wanted(&mut self, now: Instant) -> bool {
        if self.socket.is_none() {
            return false;
        }
        let allowed = self.status_sent.map_or(now, |at| at + STATUS_INTERVAL);
        if now < allowed {
            self.status_due = Some(allowed);
            return false;
        }
        self.status_due = None;
        true
    }

    /// Sends `line` as the status if it changed.
    pub fn status(&mut self, now: Instant, line: String) {
        if line != self.status {
            self.send(&[NotifyState::Status(&line)]);
            self.status = line;
            self.status_sent = Some(now);
        }
    }

    /// Whether a held-back status is due.
    pub fn status_due(&self, now: Instant) -> bool {
        self.status_due.is_some_and(|at| at <= now)
    }

    /// Pings the watchdog if it is time.
    pub fn on_timer(&mut self, now: Instant) {
        if let Some((every, next)) = self.watchdog
            && next <= now
        {
            self.send(&[NotifyState::Watchdog]);
            self.watchdog = Some((every, now + every));
        }
    }

    /// The next moment this module needs the loop to wake up.
    pub fn next_deadline(&self) -> Option<Instant> {
        let ping = self.watchdog.map(|(_, next)| next);
        match (ping, self.status_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

fn unbound_nonblocking() -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// One datagram to `$NOTIFY_SOCKET`: a path, or an abstract name after `@`.
/// A full queue is an error (`WouldBlock`), never a wait.
fn send_to(socket: &UnixDatagram, path: &OsString, message: &[u8]) -> io::Result<()> {
    let sent = match path.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(message, &address)?
        }
        None => socket.send_to(message, Path::new(path))?,
    };
    if sent == message.len() {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::WriteZero, "incomplete write"))
    }
}
