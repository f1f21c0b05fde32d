//! Writers and readers: threads of the harness that push bytes into FIFOs
//! and count what comes out, timed from when all have their FIFO open to
//! when the last reader has every byte.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use crate::harness::{IO_CHUNK, Res};
use crate::sys::{open_r, open_w, set_pipe_size};

/// A buffer of `len` bytes of varied content.
pub fn pattern(len: usize) -> Arc<Vec<u8>> {
    Arc::new((0..len).map(|i| (i * 31 % 251) as u8).collect())
}

/// Writes `total` bytes of `buf` (repeated) in IO_CHUNK writes, then closes.
fn write_all_from(mut f: File, buf: &[u8], total: u64) -> Res<()> {
    let mut left = total;
    let mut at = 0usize;
    while left > 0 {
        let n = (IO_CHUNK as u64).min(left) as usize;
        let n = n.min(buf.len() - at);
        f.write_all(&buf[at..at + n])
            .map_err(|e| format!("write: {e}"))?;
        left -= n as u64;
        at = (at + n) % buf.len();
    }
    Ok(())
}

/// What a reader saw.
#[derive(Default, Clone, Copy)]
struct ReadStats {
    bytes: u64,
    /// Line workload: places where a line of one writer continues with
    /// another writer's bytes.
    torn: u64,
}

/// Reads until `total` bytes or EOF; with `lines`, counts torn lines.
fn read_count(mut f: File, total: u64, lines: bool) -> Res<(ReadStats, Instant)> {
    let mut buf = vec![0u8; IO_CHUNK];
    let mut st = ReadStats::default();
    let mut prev = b'\n';
    while st.bytes < total {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read: {e}")),
        };
        if lines {
            st.torn += torn_in(prev, &buf[..n]);
            prev = buf[n - 1];
        }
        st.bytes += n as u64;
    }
    Ok((st, Instant::now()))
}

/// Line workload: each writer fills its lines with its own letter, so a
/// change of letter not at a newline is a torn line.
fn torn_in(prev: u8, b: &[u8]) -> u64 {
    let edge = |x: u8, y: u8| u32::from((x != y) & (x != b'\n') & (y != b'\n'));
    let mut torn = u64::from(edge(prev, b[0]));
    let (xs, ys) = (&b[..b.len() - 1], &b[1..]);
    for (cx, cy) in xs.chunks(1 << 16).zip(ys.chunks(1 << 16)) {
        torn += u64::from(cx.iter().zip(cy).map(|(&x, &y)| edge(x, y)).sum::<u32>());
    }
    torn
}

/// One transfer: writers and readers as threads, the clock started once all
/// of them have their FIFO open, stopped when the last reader has its bytes.
pub struct Transfer {
    pub writers: Vec<(PathBuf, Arc<Vec<u8>>, u64)>,
    pub readers: Vec<(PathBuf, u64)>,
    pub lines: bool,
    pub pipe_size: Option<usize>,
}

pub struct Moved {
    pub secs: f64,
    /// Bytes the writers wrote.
    pub bytes: u64,
    pub torn: u64,
}

impl Transfer {
    pub fn run(self) -> Res<Moved> {
        let parties = self.writers.len() + self.readers.len() + 1;
        let barrier = Arc::new(Barrier::new(parties));
        let lines = self.lines;
        let mut wh = Vec::new();
        let bytes: u64 = self.writers.iter().map(|w| w.2).sum();
        let pipe_size = self.pipe_size;
        for (path, buf, total) in self.writers {
            let b = Arc::clone(&barrier);
            wh.push(thread::spawn(move || -> Res<()> {
                let f = open_w(&path);
                if let (Ok(f), Some(sz)) = (&f, pipe_size) {
                    set_pipe_size(f.as_raw_fd(), sz);
                }
                b.wait();
                write_all_from(f?, &buf, total)
            }));
        }
        let mut rh = Vec::new();
        for (path, total) in self.readers {
            let b = Arc::clone(&barrier);
            rh.push(thread::spawn(move || -> Res<(ReadStats, Instant, u64)> {
                let f = open_r(&path);
                b.wait();
                let (st, at) = read_count(f?, total, lines)?;
                Ok((st, at, total))
            }));
        }
        barrier.wait();
        let t0 = Instant::now();
        let mut last = t0;
        let mut torn = 0;
        let mut errors = Vec::new();
        for h in rh {
            match h.join() {
                Ok(Ok((st, at, total))) => {
                    if st.bytes != total {
                        errors.push(format!("reader got {} of {total} bytes", st.bytes));
                    }
                    torn += st.torn;
                    last = last.max(at);
                }
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push("reader panicked".into()),
            }
        }
        for h in wh {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push("writer panicked".into()),
            }
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(Moved {
            secs: (last - t0).as_secs_f64(),
            bytes,
            torn,
        })
    }
}
