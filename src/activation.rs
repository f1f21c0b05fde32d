//! FIFOs passed by the service manager (socket activation): a `.socket`
//! unit's `ListenFIFO=` creates the FIFO and holds it open, and hands fifod
//! its fd through `LISTEN_FDS`/`LISTEN_PID`, named by `FileDescriptorName=`
//! in `LISTEN_FDNAMES`. Each name must be a `[fifo.NAME]` of the config.
//!
//! fds fifod stored itself (`fdstore`) come back the same way, under names
//! of its own; they are sorted out here and taken back by the daemon.
//!
//! Such a FIFO belongs to systemd: fifod does not create, chmod, chown or
//! remove it. Because systemd keeps it open, what writers put in it while
//! fifod restarts waits in the pipe.

use std::collections::HashMap;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};

use nix::sys::stat::{SFlag, fstat};

use crate::config::Config;
use crate::fdstore::{self, Stored};

/// The fds passed to fifod: socket units' FIFOs, and what fifod itself
/// stored before it was started again.
#[derive(Debug, Default)]
pub struct Passed {
    /// Socket units' FIFOs, by `[fifo.NAME]`.
    pub fifos: HashMap<String, OwnedFd>,
    /// fds fifod stored (names under `fdstore::PREFIX`).
    pub stored: Stored,
}

/// Takes the fds passed to fifod, by name, checking that each socket
/// unit's is a FIFO that the config claims. Without `LISTEN_FDS` (or when
/// `LISTEN_PID` names another process), there are none.
pub fn passed_fds(config: &Config) -> Result<Passed, String> {
    // LISTEN_FDNAMES is read only when fds are really for fifod: variables
    // meant for another process (LISTEN_PID names it) are none of its business.
    let passed = match handover()? {
        Some(handed) => handed,
        None => {
            let none = sd_notify::listen_fds()
                .map_err(|e| format!("cannot take the fds passed by the service manager: {e}"))?
                .len()
                == 0;
            if none {
                return Ok(Passed::default());
            }
            sd_notify::listen_fds_with_names()
                .map_err(|e| format!("cannot take the fds passed by the service manager: {e}"))?
                .collect()
        }
    };
    let mut fifos = HashMap::new();
    let mut stored = Vec::new();
    for (raw, name) in passed {
        // SAFETY: by the LISTEN_FDS protocol (checked against LISTEN_PID),
        // or the handover of the fifod this process was before it executed
        // itself (checked against FIFOD_HANDOVER_PID), the fd was open
        // before fifod started and is passed for it to own; nothing else in
        // fifod owns it, and this runs once.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if name.starts_with(fdstore::PREFIX) {
            stored.push((name, fd));
            continue;
        }
        let kind = fstat(&fd)
            .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT)
            .map_err(|e| format!("passed fd {raw} ({name}): {}", e.desc()))?;
        if kind != SFlag::S_IFIFO {
            return Err(format!(
                "passed fd {raw} (named \"{name}\") is not a FIFO: fifod takes only \
                 ListenFIFO= entries"
            ));
        }
        if !config.fifos.iter().any(|f| f.name == name) {
            return Err(format!(
                "passed fd {raw} is named \"{name}\", but no [fifo.{name}] in the config claims \
                 it; give each ListenFIFO= socket unit FileDescriptorName= matching a [fifo.NAME]"
            ));
        }
        if fifos.insert(name.clone(), fd).is_some() {
            return Err(format!("two passed fds are named \"{name}\""));
        }
    }
    Ok(Passed {
        fifos,
        stored: Stored::sort(stored),
    })
}

/// The fds an earlier fifod in this process handed over before it executed
/// this one (`fifod upgrade`): `$FIFOD_HANDOVER` is the fd of its state (a
/// memfd), whose first lines name the others (`fd RAW NAME`); honoured only
/// when `$FIFOD_HANDOVER_PID` is this process. Each is made close-on-exec
/// again.
fn handover() -> Result<Option<Vec<(RawFd, String)>>, String> {
    let ours = std::env::var("FIFOD_HANDOVER_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        == Some(std::process::id());
    let Some(state) = std::env::var("FIFOD_HANDOVER").ok().filter(|_| ours) else {
        return Ok(None);
    };
    let state = state
        .parse::<RawFd>()
        .ok()
        .filter(|&fd| fd > 2)
        .ok_or_else(|| format!("FIFOD_HANDOVER is not an fd: {state}"))?;
    let claim = |raw: RawFd, name: &str| -> Result<(), String> {
        // SAFETY: `raw` is only borrowed to set its flags; F_SETFD fails
        // on an fd that is not open, which is then refused.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
            .map(drop)
            .map_err(|e| format!("FIFOD_HANDOVER: fd {raw} ({name}): {}", e.desc()))
    };
    claim(state, fdstore::STATE)?;
    // SAFETY: as above; the clone is this function's own.
    let file = unsafe { BorrowedFd::borrow_raw(state) }
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .map_err(|e| format!("FIFOD_HANDOVER: {e}"))?;
    let mut text = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    // Up to the first line that is not an `fd` line.
    while !text
        .split(|&b| b == b'\n')
        .any(|line: &[u8]| !line.is_empty() && !line.starts_with(b"fd "))
    {
        match std::os::unix::fs::FileExt::read_at(&file, &mut chunk, text.len() as u64) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("FIFOD_HANDOVER: the state cannot be read: {e}")),
        }
    }
    let mut handed = vec![(state, fdstore::STATE.to_string())];
    for line in text.split(|&b| b == b'\n') {
        let Some(rest) = line.strip_prefix(b"fd ") else {
            break;
        };
        let rest = String::from_utf8_lossy(rest);
        let Some((raw, name)) = rest
            .split_once(' ')
            .and_then(|(raw, name)| Some((raw.parse::<RawFd>().ok()?, name)))
            .filter(|&(raw, _)| raw > 2)
        else {
            return Err(format!("FIFOD_HANDOVER: not an fd line: {rest}"));
        };
        claim(raw, name)?;
        handed.push((raw, name.to_string()));
    }
    Ok(Some(handed))
}
