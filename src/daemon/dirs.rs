//! Someone else's changes to the FIFOs' directories: a FIFO that was
//! removed, renamed or replaced is made again at once, through the same
//! path as a reload (`watch` says something happened; `fifo` tells whether
//! a FIFO is still its node).

use std::collections::HashSet;
use std::path::Path;

use log::{error, warn};

use super::{Daemon, State};
use crate::fifo::ManagedFifo;

impl Daemon {
    /// Watches the directories of every managed FIFO: each directory once
    /// (a large config has many FIFOs and few directories), and each time,
    /// since one may have been removed and made again since the last.
    /// With `only`, just those of the FIFOs at these indices (a reload's
    /// new ones: the others' directories are watched already).
    pub(super) fn watch_dirs(&mut self, only: Option<&dyn Fn(usize) -> bool>) {
        let Some(watch) = &self.dir_watch else {
            return;
        };
        let dirs: HashSet<&Path> = self
            .footprint
            .fifos
            .iter()
            .enumerate()
            .filter(|&(i, _)| only.is_none_or(|only| only(i)))
            .filter_map(|(_, fifo)| fifo.path.parent())
            .collect();
        for dir in dirs {
            if let Err(e) = watch.watch(dir) {
                warn!("cannot watch {}: {e}", dir.display());
            }
        }
    }

    /// Something changed in a FIFO's directory: a FIFO whose path no longer
    /// names it (removed, renamed, replaced) is made again at once, as a
    /// reload would; writers still connected to the old one are read to
    /// their end like those of a removed FIFO.
    pub(super) fn on_dirs_changed(&mut self) {
        let Some(watch) = &self.dir_watch else {
            return;
        };
        if !watch.drain() || self.state != State::Running {
            return;
        }
        let gone: Vec<&ManagedFifo> = self
            .footprint
            .fifos
            .iter()
            .filter(|f| !f.passed && !f.in_place())
            .collect();
        if gone.is_empty() {
            return;
        }
        for fifo in &gone {
            warn!(
                "fifo {}: {} was removed or replaced by someone else; making it again",
                fifo.name,
                fifo.path.display()
            );
        }
        if let Err(why) = self.apply(self.config.clone(), true) {
            error!("{why}; the FIFO is made again as soon as its path is free");
        }
    }
}
