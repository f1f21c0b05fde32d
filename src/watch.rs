//! Noticing at once that someone removed, renamed or replaced a managed
//! FIFO: an inotify watch on each directory that holds one. The watch only
//! says that something happened in a directory; whether a FIFO is still the
//! node fifod made is then checked through its directory's fd (`fifo`).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

#[derive(Debug)]
pub struct DirWatch {
    inotify: Inotify,
    /// The directories watched now: watching one again costs no system
    /// call, so a reload of a large config watches only new directories.
    watched: HashMap<PathBuf, WatchDescriptor>,
}

impl DirWatch {
    pub fn new() -> io::Result<DirWatch> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        Ok(DirWatch {
            inotify,
            watched: HashMap::new(),
        })
    }

    /// Watches `dir` for entries that go away or are replaced, unless it
    /// is watched already.
    pub fn watch(&mut self, dir: &Path) -> io::Result<()> {
        if self.watched.contains_key(dir) {
            return Ok(());
        }
        let mask = AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_ONLYDIR
            | AddWatchFlags::IN_DONT_FOLLOW;
        let wd = self.inotify.add_watch(dir, mask)?;
        self.watched.insert(dir.to_path_buf(), wd);
        Ok(())
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Reads every pending event; returns whether there was any. A
    /// directory that went away (its watch with it) is watched again when
    /// `watch` next names it.
    pub fn drain(&mut self) -> bool {
        let mut any = false;
        loop {
            match self.inotify.read_events() {
                Ok(events) if !events.is_empty() => {
                    any = true;
                    for event in events {
                        if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                            self.watched.retain(|_, wd| *wd != event.wd);
                        }
                    }
                }
                Err(Errno::EINTR) => {}
                // Empty (EAGAIN), or an error that the next event repeats.
                _ => return any,
            }
        }
    }
}
