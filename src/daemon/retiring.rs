//! Output FIFOs a reload removed while fifod still held bytes for them:
//! what it held is written as their reader makes room, and each path is
//! removed once its pipe is empty or its time is up.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use log::{info, warn};

use super::{END_POLL_FIRST, END_POLL_MAX, write_some};
use crate::fifo::{Footprint, ManagedFifo};
use crate::pipe;

#[derive(Debug)]
struct Retiring {
    fifo: ManagedFifo,
    fd: OwnedFd,
    bytes: Vec<u8>,
    written: usize,
    deadline: Instant,
    /// When to look again, and the interval (doubling).
    next: (Instant, Duration),
}

#[derive(Debug, Default)]
pub(super) struct RetiringOutputs {
    outputs: Vec<Retiring>,
}

impl RetiringOutputs {
    pub(super) fn paths(&self) -> impl Iterator<Item = &Path> {
        self.outputs.iter().map(|r| r.fifo.path.as_path())
    }

    /// `fifo`, held open by `fd`, retires with `bytes` still to write,
    /// until `deadline`.
    pub(super) fn retire(
        &mut self,
        fifo: ManagedFifo,
        fd: OwnedFd,
        bytes: Vec<u8>,
        deadline: Instant,
    ) {
        self.outputs.push(Retiring {
            fifo,
            fd,
            bytes,
            written: 0,
            deadline,
            next: (Instant::now(), END_POLL_FIRST),
        });
    }

    /// Takes the output retiring at `path` back: its FIFO, its fd and
    /// the bytes it still had to write.
    pub(super) fn reclaim(&mut self, path: &Path) -> Option<(ManagedFifo, OwnedFd, Vec<u8>)> {
        let i = self.outputs.iter().position(|r| r.fifo.path == path)?;
        let r = self.outputs.swap_remove(i);
        let rest = r.bytes[r.written..].to_vec();
        Some((r.fifo, r.fd, rest))
    }

    /// Writes on, and removes those whose reader has everything, or whose
    /// time is up.
    pub(super) fn tend(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.outputs.len() {
            let r = &mut self.outputs[i];
            if r.next.0 > now {
                i += 1;
                continue;
            }
            if r.written < r.bytes.len() {
                r.written += write_some(r.fd.as_fd(), &r.bytes[r.written..]);
            }
            let unwritten = r.bytes.len() - r.written;
            let unread = pipe::queued_bytes(r.fd.as_fd());
            if unwritten == 0 && unread == 0 {
                let r = self.outputs.swap_remove(i);
                info!("fifo {}: its reader has everything", r.fifo.name);
                Footprint::remove_fifo(&r.fifo);
            } else if now >= r.deadline {
                let r = self.outputs.swap_remove(i);
                warn!(
                    "fifo {}: removed with {} bytes undelivered ({unwritten} held by fifod, \
                     {unread} unread in the pipe)",
                    r.fifo.name,
                    unwritten + unread
                );
                Footprint::remove_fifo(&r.fifo);
            } else {
                let wait = (r.next.1 * 2).min(END_POLL_MAX);
                r.next = (now + r.next.1, wait);
                i += 1;
            }
        }
    }

    /// When one next needs a look.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.outputs.iter().map(|r| r.next.0).min()
    }

    /// At the very end: they go, whatever they hold.
    pub(super) fn remove_all(&mut self) {
        for r in self.outputs.drain(..) {
            let left = r.bytes.len() - r.written + pipe::queued_bytes(r.fd.as_fd());
            if left > 0 {
                warn!("fifo {}: {left} bytes undelivered", r.fifo.name);
            }
            Footprint::remove_fifo(&r.fifo);
        }
    }
}
