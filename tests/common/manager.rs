//! A stand-in for systemd's side of the fd store: a notify socket that
//! takes `FDSTORE=1` (with `FDNAME=`, the fds in `SCM_RIGHTS`),
//! `FDSTOREREMOVE=1` and `READY=1`, and a restart that passes what it
//! stores back as systemd does (`LISTEN_FDS`, `LISTEN_FDNAMES`, with the
//! daemon's own pid as `LISTEN_PID`; newest first).

use std::collections::BTreeMap;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

use super::{Daemon, Launch, Listen, Sandbox, TIMEOUT};

/// How many fds the stand-in keeps, as `FileDescriptorStoreMax=`.
pub const STORE_MAX: usize = 256;

/// What the stand-in holds, shared with the thread that takes messages.
#[derive(Debug, Default)]
struct Held {
    /// What is stored, oldest first: (name, fd).
    store: Vec<(String, OwnedFd)>,
    /// `READY=1` messages seen.
    readies: usize,
    /// The last of the stand-in's own marks seen (`settle`).
    marks: u64,
}

/// The service manager's side: takes messages as they come (as systemd
/// does), on a thread of its own, until dropped.
#[derive(Debug)]
pub struct StandIn {
    path: PathBuf,
    /// What is held, and a signal each time a message is taken.
    held: Arc<(Mutex<Held>, Condvar)>,
    /// Marks sent by `settle`.
    marks: u64,
    stop: Arc<AtomicBool>,
    taker: Option<std::thread::JoinHandle<()>>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(taker) = self.taker.take() {
            let _ = taker.join();
        }
    }
}

impl StandIn {
    /// A notify socket in the sandbox.
    pub fn new(sb: &Sandbox) -> StandIn {
        let path = sb.path("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        // Wakes now and then to see whether it is to stop.
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("a read timeout");
        let held = Arc::new((Mutex::new(Held::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let taker = {
            let (held, stop) = (Arc::clone(&held), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some((text, fds)) = receive(&socket) {
                        take(&mut held.0.lock().unwrap(), &text, fds);
                        held.1.notify_all();
                    }
                }
            })
        };
        StandIn {
            path,
            held,
            stop,
            taker: Some(taker),
            marks: 0,
        }
    }

    /// How to launch fifod under this manager: `NOTIFY_SOCKET`, `FDSTORE`,
    /// and the stored fds passed as `LISTEN_FDS`.
    pub fn launch(&self) -> Launch {
        let mut launch = Launch::default();
        launch
            .env
            .push(("NOTIFY_SOCKET".into(), self.path.clone().into()));
        launch
            .env
            .push(("FDSTORE".into(), STORE_MAX.to_string().into()));
        // A debugging aid: `FIFOD_TEST_LOG=debug` is fifod's RUST_LOG here.
        if let Some(level) = std::env::var_os("FIFOD_TEST_LOG") {
            launch.env.push(("RUST_LOG".into(), level));
        }
        let held = self.held.0.lock().unwrap();
        if !held.store.is_empty() {
            launch.listen = Some(Listen {
                fds: held
                    .store
                    .iter()
                    .rev()
                    .map(|(name, fd)| (name.clone(), fd.as_raw_fd()))
                    .collect(),
                pid: None,
            });
        }
        launch
    }
}

/// One message from the socket, or `None` after the read timeout.
fn receive(socket: &UnixDatagram) -> Option<(String, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 4096];
    let mut space = nix::cmsg_space!([RawFd; 64]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = match recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    ) {
        Ok(msg) => msg,
        Err(Errno::EAGAIN | Errno::EINTR) => return None,
        Err(e) => panic!("receiving from the notify socket: {e}"),
    };
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().expect("control messages") {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            // SAFETY: fds received with SCM_RIGHTS are new in this process
            // and owned by nobody else.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let n = msg.bytes;
    Some((String::from_utf8_lossy(&buf[..n]).into_owned(), fds))
}

/// What systemd does with a message: `READY=1`, `FDSTOREREMOVE=1` and
/// `FDSTORE=1` with `FDNAME=`.
fn take(held: &mut Held, text: &str, fds: Vec<OwnedFd>) {
    let fields: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    if fields.get("READY") == Some(&"1") {
        held.readies += 1;
    }
    if let Some(mark) = fields.get("X-MARK").and_then(|m| m.parse().ok()) {
        held.marks = mark;
    }
    let name = fields.get("FDNAME").copied().unwrap_or("stored");
    if fields.get("FDSTOREREMOVE") == Some(&"1") {
        held.store.retain(|(n, _)| n != name);
    }
    if fields.get("FDSTORE") == Some(&"1") {
        for fd in fds {
            assert!(
                held.store.len() < STORE_MAX,
                "fifod stored more than FDSTORE={STORE_MAX} fds"
            );
            held.store.push((name.to_string(), fd));
        }
    }
}

impl StandIn {
    /// Waits until the stand-in has taken every message sent so far: it
    /// sends one of its own and waits to see it come through the queue.
    fn settle(&mut self) {
        self.marks += 1;
        let mark = self.marks;
        let socket = UnixDatagram::unbound().expect("a socket");
        socket
            .send_to(format!("X-MARK={mark}\n").as_bytes(), &self.path)
            .expect("send to the notify socket");
        self.wait_for("its own message", |h| h.marks >= mark);
    }

    /// Waits (up to `TIMEOUT`) until `done` holds of what is held.
    fn wait_for(&self, what: &str, done: impl Fn(&Held) -> bool) {
        let (held, taken) = &*self.held;
        let held = held.lock().unwrap();
        let (_held, wait) = taken
            .wait_timeout_while(held, TIMEOUT, |h| !done(h))
            .unwrap();
        assert!(
            !wait.timed_out(),
            "the stand-in manager did not see {what} within {TIMEOUT:?}"
        );
    }

    /// The names stored now (one per fd), once every message sent so far
    /// is taken.
    pub fn names(&mut self) -> Vec<String> {
        self.settle();
        let (held, _) = &*self.held;
        let held = held.lock().unwrap();
        held.store.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Starts fifod in `sb` under this manager and waits for its readiness.
    pub fn start(&mut self, sb: Sandbox) -> Daemon {
        self.settle();
        let before = self.held.0.lock().unwrap().readies;
        let d = Daemon::start_with(sb, &self.launch());
        let (held, taken) = &*self.held;
        let held = held.lock().unwrap();
        let (_held, wait) = taken
            .wait_timeout_while(held, TIMEOUT, |h| h.readies == before)
            .unwrap();
        assert!(
            !wait.timed_out(),
            "no READY=1 within {TIMEOUT:?}\n{}",
            d.log()
        );
        d
    }

    /// Kills fifod with SIGKILL, as a crash would, and starts it again with
    /// what it stored before it died.
    pub fn crash_and_restart(&mut self, d: Daemon) -> Daemon {
        let sb = d.kill9();
        self.start(sb)
    }
}
