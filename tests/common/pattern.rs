//! A deterministic byte stream (written, checked and read back without
//! being stored) and a seeded source of chance.

use std::fs::File;
use std::io;
use std::time::{Duration, Instant};

use nix::poll::PollFlags;

use super::{KIB, poll_one, read_some, try_write, write_all};

/// 8 pseudo-random bytes for block `idx` of stream `seed` (xorshift64*
/// of a key mixed from seed and index).
pub fn pattern_block(seed: u64, idx: u64) -> u64 {
    let mut x = (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ idx.wrapping_mul(0xD1B5_4A32_D192_ED03))
    .wrapping_add(0x2545_F491_4F6C_DD1D);
    for _ in 0..2 {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
    }
    x
}

/// Fills `buf` with bytes `offset..offset+len` of stream `seed`.
pub fn fill_pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut i = 0;
    let mut off = offset;
    while i < buf.len() {
        let within = (off % 8) as usize;
        let bytes = pattern_block(seed, off / 8).to_le_bytes();
        let n = (8 - within).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&bytes[within..within + n]);
        i += n;
        off += n as u64;
    }
}

/// Bytes `offset..offset+len` of stream `seed`.
pub fn pattern(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_pattern(seed, offset, &mut v);
    v
}

/// Checks consecutive chunks against stream `seed` without storing it.
#[derive(Debug)]
pub struct Verifier {
    seed: u64,
    pub offset: u64,
    scratch: Vec<u8>,
}

impl Verifier {
    pub fn new(seed: u64, offset: u64) -> Self {
        Verifier {
            seed,
            offset,
            scratch: Vec::new(),
        }
    }

    pub fn check(&mut self, data: &[u8]) -> Result<(), String> {
        self.scratch.resize(data.len(), 0);
        fill_pattern(self.seed, self.offset, &mut self.scratch);
        if self.scratch[..] != *data {
            let i = data
                .iter()
                .zip(&self.scratch)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!(
                "stream {} mismatch at offset {}: got {:#04x}, expected {:#04x}",
                self.seed,
                self.offset + i as u64,
                data[i],
                self.scratch[i]
            ));
        }
        self.offset += data.len() as u64;
        Ok(())
    }
}

/// Writes `len` bytes of stream `seed` from offset `offset` (deadline `end`).
pub fn write_pattern(f: &File, seed: u64, offset: u64, len: usize, end: Instant) {
    let mut buf = vec![0u8; 64 * KIB];
    let mut done = 0;
    while done < len {
        let n = buf.len().min(len - done);
        fill_pattern(seed, offset + done as u64, &mut buf[..n]);
        write_all(f, &buf[..n], end);
        done += n;
    }
}

/// Writes stream `seed` in 4096-byte (atomic) pieces until the writer
/// stalls: EAGAIN and still no room after `stall`. Panics if `limit` bytes
/// go through without a stall. Returns the bytes written.
pub fn write_until_stalled(f: &File, seed: u64, limit: u64, stall: Duration) -> u64 {
    let mut written = 0u64;
    let mut chunk = vec![0u8; 4096];
    loop {
        assert!(
            written < limit,
            "wrote {written} bytes without the writer ever stalling: no backpressure"
        );
        fill_pattern(seed, written, &mut chunk);
        match try_write(f, &chunk) {
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if poll_one(f, PollFlags::POLLOUT, stall).is_empty() {
                    return written;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("write: {e}"),
        }
    }
}

/// Reads until EOF, verifying against stream `seed` from `offset`;
/// returns the number of bytes read.
pub fn read_verify_to_eof(
    f: &File,
    seed: u64,
    offset: u64,
    timeout: Duration,
) -> Result<u64, String> {
    let end = Instant::now() + timeout;
    let mut v = Verifier::new(seed, offset);
    let mut buf = vec![0u8; 64 * KIB];
    loop {
        let k = read_some(f, &mut buf, end);
        if k == 0 {
            return Ok(v.offset - offset);
        }
        v.check(&buf[..k])?;
    }
}

/// xorshift64: the tests' only source of chance, seeded, so that a failure
/// can be replayed.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `lo..=hi`.
    pub fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}
