//! The one place epoll is called. Level-triggered throughout: a sink is
//! watched for writability only while it holds bytes the pipe could not take,
//! and a source whose sinks are full is not watched at all, so a full pipe
//! never causes a wake-up storm and an idle daemon sleeps in `epoll_wait`.
//!
//! Signals arrive here too: each handled signal writes a byte into its own
//! socket pair (signal-hook's self-pipe), and the loop reports it as an event.

use std::io::{self, Read};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

/// An endpoint's slot in the daemon's tables, and the generation of the
/// slot when the endpoint was registered: an event whose generation the
/// slot no longer has is for an endpoint that is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotKey {
    pub index: u32,
    pub generation: u32,
}

/// Generations wrap within this mask (24 bits of the epoll token): an
/// event would have to sit in one batch while its slot is emptied 16
/// million times to be taken for the wrong endpoint.
pub const GENERATION_MASK: u32 = 0x00ff_ffff;

/// What a registered fd stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    Source(SlotKey),
    Sink(SlotKey),
    /// The control socket's listener.
    Control,
    /// A control connection being answered.
    Client(usize),
    /// The directories that hold managed FIFOs changed.
    Dirs,
    /// A config loaded for a reload is ready.
    Loaded,
    /// A process fifod adopted after a restart, not its child, exited (its
    /// pidfd, by the process's index).
    Process(usize),
}

/// Which readiness to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    Read,
    Write,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A handled signal was delivered (coalesced: one event however many came).
    Signal(libc::c_int),
    Ready {
        token: Token,
        readable: bool,
        writable: bool,
        /// EPOLLERR or EPOLLHUP.
        failed: bool,
    },
}

// An epoll token: the kind in the top 8 bits, a generation in the next 24,
// an index in the low 32.
const KIND_SHIFT: u32 = 56;
const GENERATION_SHIFT: u32 = 32;

const KIND_SIGNAL: u64 = 0;
const KIND_SOURCE: u64 = 1;
const KIND_SINK: u64 = 2;
const KIND_CONTROL: u64 = 3;
const KIND_CLIENT: u64 = 4;
const KIND_DIRS: u64 = 5;
const KIND_LOADED: u64 = 6;
const KIND_PROCESS: u64 = 7;

fn encode_key(kind: u64, key: SlotKey) -> u64 {
    (kind << KIND_SHIFT)
        | (u64::from(key.generation & GENERATION_MASK) << GENERATION_SHIFT)
        | u64::from(key.index)
}

fn encode(token: Token) -> u64 {
    match token {
        Token::Source(key) => encode_key(KIND_SOURCE, key),
        Token::Sink(key) => encode_key(KIND_SINK, key),
        Token::Control => KIND_CONTROL << KIND_SHIFT,
        Token::Client(i) => (KIND_CLIENT << KIND_SHIFT) | i as u64,
        Token::Dirs => KIND_DIRS << KIND_SHIFT,
        Token::Loaded => KIND_LOADED << KIND_SHIFT,
        Token::Process(i) => (KIND_PROCESS << KIND_SHIFT) | i as u64,
    }
}

fn decode(data: u64) -> Option<Token> {
    let index = (data & 0xffff_ffff) as u32;
    let key = SlotKey {
        index,
        generation: ((data >> GENERATION_SHIFT) as u32) & GENERATION_MASK,
    };
    match data >> KIND_SHIFT {
        KIND_SOURCE => Some(Token::Source(key)),
        KIND_SINK => Some(Token::Sink(key)),
        KIND_CONTROL => Some(Token::Control),
        KIND_CLIENT => Some(Token::Client(index as usize)),
        KIND_DIRS => Some(Token::Dirs),
        KIND_LOADED => Some(Token::Loaded),
        KIND_PROCESS => Some(Token::Process(index as usize)),
        _ => None,
    }
}

fn flags(interest: Interest) -> EpollFlags {
    match interest {
        Interest::Read => EpollFlags::EPOLLIN,
        Interest::Write => EpollFlags::EPOLLOUT,
    }
}

#[derive(Debug)]
pub struct EventLoop {
    epoll: Epoll,
    /// The read ends of the self-pipes, by signal number.
    signals: Vec<(libc::c_int, UnixStream)>,
    ready: Vec<EpollEvent>,
}

impl EventLoop {
    /// Creates the epoll instance and installs handlers for `signals`.
    pub fn new(signals: &[libc::c_int]) -> io::Result<EventLoop> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let mut pipes = Vec::new();
        for (index, &signal) in signals.iter().enumerate() {
            let (read_end, write_end) = UnixStream::pair()?;
            read_end.set_nonblocking(true)?;
            write_end.set_nonblocking(true)?;
            signal_hook::low_level::pipe::register(signal, write_end)?;
            let data = (KIND_SIGNAL << KIND_SHIFT) | index as u64;
            epoll.add(&read_end, EpollEvent::new(EpollFlags::EPOLLIN, data))?;
            pipes.push((signal, read_end));
        }
        Ok(EventLoop {
            epoll,
            signals: pipes,
            ready: vec![EpollEvent::empty(); 256],
        })
    }

    /// Whether a signal other than SIGCHLD came that the loop has not
    /// taken yet.
    pub fn signals_pending(&self) -> bool {
        self.signals
            .iter()
            .filter(|(signal, _)| *signal != libc::SIGCHLD)
            .any(|(_, read_end)| crate::pipe::queued_bytes(std::os::fd::AsFd::as_fd(read_end)) > 0)
    }

    pub fn add(&self, fd: BorrowedFd<'_>, token: Token, interest: Interest) -> io::Result<()> {
        self.epoll
            .add(fd, EpollEvent::new(flags(interest), encode(token)))?;
        Ok(())
    }

    /// Stops watching `fd`. Sources and sinks are removed rather than given
    /// an empty interest, because hang-up and error are reported whatever
    /// the interest, and a closed pipe would otherwise wake the loop forever.
    pub fn remove(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.epoll.delete(fd)?;
        Ok(())
    }

    /// Waits for events, at most `timeout` (forever with `None`), and appends
    /// them to `out`. An interrupted wait returns no events.
    pub fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Event>) -> io::Result<()> {
        let timeout = match timeout {
            None => EpollTimeout::NONE,
            // Round up, so that a deadline is never woken for just before it.
            Some(d) => {
                let millis = d.as_micros().div_ceil(1000);
                EpollTimeout::try_from(millis).unwrap_or(EpollTimeout::MAX)
            }
        };
        let n = match self.epoll.wait(&mut self.ready, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(e.into()),
        };
        for event in &self.ready[..n] {
            let data = event.data();
            let index = (data & 0xffff_ffff) as usize;
            let got = event.events();
            match data >> KIND_SHIFT {
                KIND_SIGNAL => {
                    if let Some((signal, pipe)) = self.signals.get(index) {
                        // Clear the pipe first, then act (signal-hook's rule):
                        // a signal arriving after this is not lost.
                        let mut sink = [0u8; 64];
                        while matches!((&*pipe).read(&mut sink), Ok(n) if n > 0) {}
                        out.push(Event::Signal(*signal));
                    }
                }
                _ => {
                    let Some(token) = decode(data) else { continue };
                    out.push(Event::Ready {
                        token,
                        readable: got.contains(EpollFlags::EPOLLIN),
                        writable: got.contains(EpollFlags::EPOLLOUT),
                        failed: got.intersects(EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_survive_encoding_with_their_generation() {
        let key = SlotKey {
            index: 4_000_000_000,
            generation: GENERATION_MASK,
        };
        for token in [
            Token::Source(key),
            Token::Sink(SlotKey {
                index: 3,
                generation: 7,
            }),
            Token::Control,
            Token::Client(12),
            Token::Dirs,
            Token::Loaded,
        ] {
            assert_eq!(decode(encode(token)), Some(token));
        }
    }
}
