//! Noticing at once that someone removed, renamed or replaced a managed
//! FIFO: an inotify watch on each directory that holds one. The watch only
//! says that something happened in a directory; whether a FIFO is still the
//! node fifod made is then checked through its directory's fd (`fifo`).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

#[derive(Debug)]
pub struct DirWatch {
    inotify: Inotify,
}

impl DirWatch {
    pub fn new() -> io::Result<DirWatch> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        Ok(DirWatch { inotify })
    }

    /// Watches `dir` for entries that go away or are replaced. Watching a
    /// directory twice is harmless.
    pub fn watch(&self, dir: &Path) -> io::Result<()> {
        let mask = AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_ONLYDIR
            | AddWatchFlags::IN_DONT_FOLLOW;
        self.inotify.add_watch(dir, mask)?;
        Ok(())
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Reads every pending event; returns whether there was any.
    pub fn drain(&self) -> bool {
        let mut any = false;
        loop {
            match self.inotify.read_events() {
                Ok(events) if !events.is_empty() => any = true,
                Err(Errno::EINTR) => {}
                // Empty (EAGAIN), or an error that the next event repeats.
                _ => return any,
            }
        }
    }
}
