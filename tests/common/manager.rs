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
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

use super::{Daemon, Launch, Listen, Sandbox, TIMEOUT};

/// How many fds the stand-in keeps, as `FileDescriptorStoreMax=`.
pub const STORE_MAX: usize = 256;

#[derive(Debug)]
pub struct StandIn {
    socket: UnixDatagram,
    path: PathBuf,
    /// What is stored, oldest first: (name, fd).
    store: Vec<(String, OwnedFd)>,
    /// `READY=1` messages seen.
    pub readies: usize,
}

impl StandIn {
    /// A notify socket in the sandbox.
    pub fn new(sb: &Sandbox) -> StandIn {
        let path = sb.path("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket.set_nonblocking(true).expect("non-blocking");
        StandIn {
            socket,
            path,
            store: Vec::new(),
            readies: 0,
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
        if let Some(level) = std::env::var_os("DEBUG_LOG") {
            launch.env.push(("RUST_LOG".into(), level));
        }
        if !self.store.is_empty() {
            launch.listen = Some(Listen {
                fds: self
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

    /// Reads every message waiting on the socket.
    pub fn pump(&mut self) {
        let mut buf = vec![0u8; 4096];
        let mut space = nix::cmsg_space!([RawFd; 64]);
        loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let (text, fds) = match recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let mut fds = Vec::new();
                    for cmsg in msg.cmsgs().expect("control messages") {
                        if let ControlMessageOwned::ScmRights(raw) = cmsg {
                            // SAFETY: fds received with SCM_RIGHTS are new
                            // in this process and owned by nobody else.
                            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                        }
                    }
                    let n = msg.bytes;
                    (String::from_utf8_lossy(&buf[..n]).into_owned(), fds)
                }
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => panic!("receiving from the notify socket: {e}"),
            };
            self.take(&text, fds);
        }
    }

    fn take(&mut self, text: &str, fds: Vec<OwnedFd>) {
        let fields: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .collect();
        if fields.get("READY") == Some(&"1") {
            self.readies += 1;
        }
        let name = fields.get("FDNAME").copied().unwrap_or("stored");
        if fields.get("FDSTOREREMOVE") == Some(&"1") {
            self.store.retain(|(n, _)| n != name);
        }
        if fields.get("FDSTORE") == Some(&"1") {
            for fd in fds {
                assert!(
                    self.store.len() < STORE_MAX,
                    "fifod stored more than FDSTORE={STORE_MAX} fds"
                );
                self.store.push((name.to_string(), fd));
            }
        }
    }

    /// The names stored now (one per fd).
    pub fn names(&mut self) -> Vec<String> {
        self.pump();
        self.store.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Starts fifod in `sb` under this manager and waits for its readiness.
    pub fn start(&mut self, sb: Sandbox) -> Daemon {
        self.pump();
        let mut d = Daemon::start_with(sb, &self.launch());
        let end = Instant::now() + TIMEOUT;
        let before = self.readies;
        while self.readies == before {
            assert!(
                Instant::now() < end,
                "no READY=1 within {TIMEOUT:?}\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(2));
            self.pump();
        }
        let _ = &mut d;
        d
    }

    /// Kills fifod with SIGKILL, as a crash would, takes what it sent
    /// before it died, and starts it again.
    pub fn crash_and_restart(&mut self, d: Daemon) -> Daemon {
        let sb = d.kill9();
        self.pump();
        self.start(sb)
    }
}
