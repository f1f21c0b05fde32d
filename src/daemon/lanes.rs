//! The private pipes in which byte routes hold what a slow sink cannot take
//! yet, so that those bytes move by `splice`/`tee` and never through fifod's
//! memory. A lane gets a pipe when it first has to hold bytes and gives it
//! back once they are delivered; a few empty ones are kept for the next.

use std::os::fd::{AsFd, BorrowedFd};

use log::{debug, error, warn};
use nix::errno::Errno;

use super::Daemon;
use crate::pipe;
use crate::pipe::PrivatePipe;
use crate::relay::{LaneId, Relay, SinkId};

/// Empty pipes kept for the next lane that needs one.
const SPARE_MAX: usize = 8;
/// What a new pipe has unless asked for more (16 pages).
const DEFAULT_PIPE: usize = 16 * pipe::PAGE;

#[derive(Debug)]
pub(super) struct LanePipes {
    by_lane: Vec<Option<PrivatePipe>>,
    /// The name each lane's pipe is in the service manager's fd store
    /// under, while it is (`fdstore`).
    stored_as: Vec<Option<String>>,
    /// Names of pipes taken back from lanes, to take out of the store
    /// before any pipe is stored again (`Daemon::unstore_lane_pipes`).
    unstore: Vec<String>,
    spare: Vec<PrivatePipe>,
    /// Capacity of every pipe here, in use or spare.
    total: usize,
    /// How much capacity they may have in all (`pipe::budget_share`):
    /// past it, lanes hold the rest of their bytes in memory.
    budget: usize,
    /// The largest pipe to ask for (`fs.pipe-max-size`).
    max_size: usize,
    /// The budget ran out at least once (logged once).
    warned: bool,
}

impl LanePipes {
    pub(super) fn new(lanes: usize) -> LanePipes {
        let budget = pipe::budget_share().unwrap_or(usize::MAX);
        LanePipes {
            by_lane: (0..lanes).map(|_| None).collect(),
            stored_as: vec![None; lanes],
            unstore: Vec::new(),
            spare: Vec::new(),
            total: 0,
            budget,
            max_size: pipe::fs_limit("pipe-max-size").unwrap_or(1 << 20),
            warned: false,
        }
    }

    pub(super) fn get(&self, lane: LaneId) -> Option<&PrivatePipe> {
        self.by_lane.get(lane)?.as_ref()
    }

    /// Gives `lane` a pipe if it has none, of `want` bytes where the limits
    /// allow. False when it cannot have one: its bytes are held in memory.
    pub(super) fn ensure(&mut self, lane: LaneId, want: usize) -> bool {
        match self.by_lane.get(lane) {
            Some(Some(_)) => return true,
            Some(None) => {}
            None => return false,
        }
        let want = want.min(self.max_size);
        let pipe = match self.spare.iter().position(|p| p.capacity >= want) {
            Some(i) => self.spare.swap_remove(i),
            None => match self.make(want) {
                Some(pipe) => pipe,
                None => match self.spare.pop() {
                    Some(smaller) => smaller,
                    None => return false,
                },
            },
        };
        self.by_lane[lane] = Some(pipe);
        true
    }

    /// A new pipe of `want` bytes, or of the default size if the budget
    /// only has room for that.
    fn make(&mut self, want: usize) -> Option<PrivatePipe> {
        let room = self.budget.saturating_sub(self.total);
        // A new pipe has the default size at least.
        let want = if want.max(DEFAULT_PIPE) <= room {
            want
        } else {
            DEFAULT_PIPE
        };
        if want > room {
            if !std::mem::replace(&mut self.warned, true) {
                warn!(
                    "the pipes that hold slow sinks' bytes reached {} KiB, a quarter of this user's \
                     pipe budget (fs.pipe-user-pages-soft): further bytes are held in memory",
                    self.total / 1024
                );
            }
            return None;
        }
        match PrivatePipe::new(want) {
            Ok(pipe) => {
                self.total += pipe.capacity;
                Some(pipe)
            }
            Err(e) => {
                debug!(
                    "no pipe for a lane ({}): its bytes are held in memory",
                    e.desc()
                );
                None
            }
        }
    }

    /// Gives `lane` a pipe taken back from the fd store (where it is
    /// under `name`), with what it holds. False if the lane has one.
    pub(super) fn adopt(&mut self, lane: LaneId, pipe: PrivatePipe, name: String) -> bool {
        match self.by_lane.get(lane) {
            Some(None) => {
                self.total += pipe.capacity;
                self.by_lane[lane] = Some(pipe);
                self.stored_as[lane] = Some(name);
                true
            }
            _ => false,
        }
    }

    /// The name `lane`'s pipe is stored under, if it is.
    pub(super) fn stored_as(&self, lane: LaneId) -> Option<&str> {
        self.stored_as.get(lane)?.as_deref()
    }

    pub(super) fn set_stored_as(&mut self, lane: LaneId, name: Option<String>) {
        if let Some(slot) = self.stored_as.get_mut(lane) {
            *slot = name;
        }
    }

    /// Names to take out of the fd store, oldest first.
    pub(super) fn take_unstore(&mut self) -> Vec<String> {
        std::mem::take(&mut self.unstore)
    }

    /// Notes that `lane` no longer has its pipe: out of the store with it.
    fn unstored(&mut self, lane: LaneId) {
        if let Some(name) = self.stored_as.get_mut(lane).and_then(Option::take) {
            self.unstore.push(name);
        }
    }

    /// Takes back `lane`'s pipe, which holds nothing.
    pub(super) fn release(&mut self, lane: LaneId) {
        let Some(pipe) = self.by_lane.get_mut(lane).and_then(Option::take) else {
            return;
        };
        self.unstored(lane);
        if self.spare.len() < SPARE_MAX {
            self.spare.push(pipe);
        } else {
            self.total -= pipe.capacity;
        }
    }

    /// Closes `lane`'s pipe with whatever is in it.
    pub(super) fn close(&mut self, lane: LaneId) {
        if let Some(pipe) = self.by_lane.get_mut(lane).and_then(Option::take) {
            self.total -= pipe.capacity;
            self.unstored(lane);
        }
    }

    /// After a reload: lanes keep their pipes under their ids; a lane that
    /// holds nothing in its pipe (one that left, among others) gives it
    /// back, and new ids get room.
    pub(super) fn keep_for(&mut self, relay: &Relay) {
        let lanes = relay.lanes();
        for lane in 0..self.by_lane.len() {
            if lanes.get(lane).is_none_or(|l| l.in_pipe() == 0) {
                self.release(lane);
            }
        }
        self.by_lane.resize_with(lanes.len(), || None);
        self.stored_as.resize(lanes.len(), None);
    }
}

impl Daemon {
    /// Gives `lane` a pipe to hold its bytes in, if the relay allows it one
    /// now and the limits do.
    pub(super) fn lane_pipe(&mut self, lane: LaneId) -> Option<BorrowedFd<'_>> {
        if !self.relay.may_pipe(lane) {
            return None;
        }
        let want = self.relay.lanes()[lane].capacity();
        if !self.lane_pipes.ensure(lane, want) {
            return None;
        }
        // With a store, a pipe takes bytes only once the service manager
        // holds it too: what it holds then outlives a crash of fifod.
        if self.fd_store.enabled() && self.lane_pipes.stored_as(lane).is_none() {
            self.unstore_lane_pipes();
            if !self.store_lane_pipe(lane) {
                self.lane_pipes.release(lane);
                return None;
            }
        }
        self.lane_pipes.get(lane).map(|p| p.write.as_fd())
    }

    pub(super) fn lane_pipe_is_empty(&self, lane: LaneId) -> bool {
        self.lane_pipes
            .get(lane)
            .is_none_or(|p| pipe::queued_bytes(p.read.as_fd()) == 0)
    }

    /// `lane`'s pipe does not hold what the relay counts in it (which no
    /// path should allow): it is closed, and what it held counted as dropped.
    pub(super) fn lane_pipe_failed(&mut self, k: SinkId, lane: LaneId) {
        let lost = self.relay.pipe_lost(lane);
        self.lane_pipes.close(lane);
        error!(
            "{}: a lane's pipe lost track of its bytes; {lost} are counted as dropped",
            self.sinks[k].name
        );
    }

    /// Gives back `lane`'s pipe once nothing is in it.
    pub(super) fn release_lane_pipe(&mut self, lane: LaneId) {
        let lane_state = &self.relay.lanes()[lane];
        if lane_state.in_pipe() == lane_state.unwanted() {
            let k = lane_state.sink;
            self.let_go_unwanted(k, lane);
        }
        // A pipe in the fd store stays with its lane: each store or removal
        // is a message to the service manager, too many to send every time
        // a sink catches up.
        if self.relay.lanes()[lane].in_pipe() == 0 && self.lane_pipes.stored_as(lane).is_none() {
            self.lane_pipes.release(lane);
        }
    }

    /// Lets go of the dropped bytes at the front of `lane`'s pipe. False
    /// if it could not (the pipe is then closed, what it held dropped).
    pub(super) fn let_go_unwanted(&mut self, k: SinkId, lane: LaneId) -> bool {
        let unwanted = self.relay.lanes()[lane].unwanted();
        if unwanted == 0 {
            return true;
        }
        let gone = match self.lane_pipes.get(lane) {
            Some(pipe) => super::io::let_go(
                self.dev_null.as_ref(),
                &mut self.scratch,
                pipe.read.as_fd(),
                unwanted,
            ),
            None => 0,
        };
        self.relay.let_go(lane, gone);
        if gone < unwanted {
            self.lane_pipe_failed(k, lane);
            return false;
        }
        true
    }

    /// Closes the pipes of `sink`'s lanes after what they held was counted
    /// as dropped (`Relay::discard`). Bytes a pipe held ahead of the source
    /// come again from the source.
    pub(super) fn close_lane_pipes_of(&mut self, k: SinkId) {
        for i in 0..self.relay.lanes_of_sink(k).len() {
            let l = self.relay.lanes_of_sink(k)[i];
            if self.lane_pipes.get(l).is_some() {
                self.relay.pipe_lost(l);
                self.lane_pipes.close(l);
            }
        }
    }

    /// Moves what `lanes` hold in a pipe into fifod's memory (a reload
    /// moves their bytes to other lanes). Sources must be settled first.
    pub(super) fn unpipe_lanes(&mut self, lanes: &[LaneId]) {
        for &l in lanes {
            let piped = self.relay.lanes()[l].in_pipe();
            if piped == 0 {
                self.lane_pipes.release(l);
                continue;
            }
            let mut bytes = vec![0; piped];
            let mut got = 0;
            if let Some(pipe) = self.lane_pipes.get(l) {
                while got < piped {
                    match nix::unistd::read(pipe.read.as_fd(), &mut bytes[got..]) {
                        Ok(0) | Err(Errno::EAGAIN) => break,
                        Ok(n) => got += n,
                        Err(Errno::EINTR) => {}
                        Err(e) => {
                            error!("a lane's pipe cannot be read: {}", e.desc());
                            break;
                        }
                    }
                }
            }
            if got < piped {
                error!(
                    "a lane's pipe gave {got} of its {piped} bytes: the rest is counted as dropped"
                );
            }
            self.relay.unpiped(l, &bytes[..got]);
            self.lane_pipes.close(l);
        }
    }
}
