//! Reading and checking a new config off the relay's path: on SIGHUP the
//! file is parsed and validated on a thread of its own (a config with
//! thousands of FIFOs takes tens of milliseconds to parse), and the loop
//! applies the result once it is ready, so routes flow meanwhile. The
//! thread touches no fd of the daemon's and ends with its load.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;

use crate::config::{self, Config, Environment, LoadError};

pub(super) type Loaded = Result<Config, LoadError>;

/// What `ConfigLoader::start` did.
#[derive(Debug)]
pub(super) enum Start {
    /// A load is under way; the loop hears of it through `fd`.
    Started,
    /// One was under way already: the file is read again after it.
    Queued,
    /// No thread could be had: the file was loaded here and then.
    Done(Box<Loaded>),
}

#[derive(Debug)]
pub(super) struct ConfigLoader {
    /// Readable once a load finished (the loop watches it).
    wake: UnixStream,
    /// The thread's end.
    waker: UnixStream,
    running: Option<(JoinHandle<()>, Receiver<Loaded>)>,
    /// A SIGHUP came while a load was under way.
    again: bool,
    /// Load on the caller's thread (the loop could not watch `wake`).
    inline: bool,
}

impl ConfigLoader {
    pub(super) fn new() -> io::Result<ConfigLoader> {
        let (wake, waker) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        waker.set_nonblocking(true)?;
        Ok(ConfigLoader {
            wake,
            waker,
            running: None,
            again: false,
            inline: false,
        })
    }

    /// From now on, `start` loads on the caller's thread.
    pub(super) fn load_inline(&mut self) {
        self.inline = true;
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Starts loading `path`, unless a load is under way already.
    pub(super) fn start(&mut self, path: &Path) -> Start {
        if self.running.is_some() {
            self.again = true;
            return Start::Queued;
        }
        if self.inline {
            return Start::Done(Box::new(config::load(path, &Environment::from_process())));
        }
        let (send, receive) = mpsc::channel();
        let waker = self.waker.try_clone();
        let owned = path.to_path_buf();
        let spawned = std::thread::Builder::new()
            .name("config".to_string())
            .spawn(move || {
                let loaded = config::load(&owned, &Environment::from_process());
                // The loop may be gone (a stop): nobody is left to tell.
                let _ = send.send(loaded);
                if let Ok(mut waker) = waker {
                    let _ = waker.write(&[1]);
                }
            });
        match spawned {
            Ok(thread) => {
                self.running = Some((thread, receive));
                Start::Started
            }
            Err(_) => Start::Done(Box::new(config::load(path, &Environment::from_process()))),
        }
    }

    /// The outcome of the load under way, once it finished; and whether
    /// the file must be read again (a SIGHUP came meanwhile).
    pub(super) fn finished(&mut self) -> Option<(Loaded, bool)> {
        let mut drained = [0u8; 16];
        while matches!((&self.wake).read(&mut drained), Ok(n) if n > 0) {}
        let loaded = self.running.as_ref()?.1.try_recv().ok()?;
        if let Some((thread, _)) = self.running.take() {
            // It has sent its result: it is at its end.
            let _ = thread.join();
        }
        Some((loaded, std::mem::take(&mut self.again)))
    }
}
