//! Helpers shared by the fifod integration tests: a sandbox per test, a
//! handle on a running daemon and deadline-bounded FIFO I/O here; by topic,
//! in submodules (all re-exported): `files` (nodes, modes, snapshots),
//! `log` (parsers for the daemon's log, stats), `pattern` (the deterministic
//! byte stream, a seeded generator), `procs` (/proc, a guarded daemon, gzip)
//! `status` (`fifod status` and its JSON document) and `strace` (attached
//! to the daemon).

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

mod files;
mod log;
mod manager;
mod pattern;
mod procs;
mod status;
mod strace;
pub use files::*;
pub use log::*;
pub use manager::*;
pub use pattern::*;
pub use procs::*;
pub use status::*;
pub use strace::*;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_fifod");
/// Deadline for ordinary waits (start-up, a few KiB of I/O, a stop).
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a stop, which may include a drain of up to the default 5 s.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for bulk transfers.
pub const BULK_TIMEOUT: Duration = Duration::from_secs(120);

/// The smallest config: FIFO `in` relayed to FIFO `out`.
pub const IN_OUT: &str = r#"
[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
"#;

/// Both ways a byte route moves bytes: `in` fanned out to `a` and `b`
/// (`tee`), and `in2` to `c` alone (`splice`).
pub const TEE_AND_SPLICE: &str = r#"
[fifo.in]
[fifo.a]
[fifo.b]
[fifo.in2]
[fifo.c]

[[route]]
from = ["in"]
to = ["a", "b"]

[[route]]
from = ["in2"]
to = ["c"]
"#;

pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * 1024;

/// Variables that would change the daemon's behaviour if inherited.
const CLEARED_ENV: [&str; 11] = [
    "FDSTORE",
    "FIFOD_CONFIG",
    // Set by CI for the real-systemd tests: not the daemon's business.
    "FIFOD_TEST_REAL_SYSTEMD",
    "JOURNAL_STREAM",
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "RUST_LOG",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

// ---------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------

/// Polls `cond` every few ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn remaining(end: Instant) -> Duration {
    end.saturating_duration_since(Instant::now())
}

// ---------------------------------------------------------------------------
// Sandbox: one temporary directory per test
// ---------------------------------------------------------------------------

/// How to launch the binary.
#[derive(Debug, Default, Clone)]
pub struct Launch {
    /// Run through `sh -c 'umask N; exec "$0" "$@"'`.
    pub umask: Option<u32>,
    /// Run as this (uid, gid).
    pub user: Option<(u32, u32)>,
    /// Extra environment (after the cleared variables were removed).
    pub env: Vec<(String, OsString)>,
    /// Working directory (default: the sandbox root).
    pub cwd: Option<PathBuf>,
    /// Binary to run instead of the one cargo built.
    pub bin: Option<PathBuf>,
    /// fds passed as systemd's socket activation passes them.
    pub listen: Option<Listen>,
    /// `JOURNAL_STREAM` names the file the daemon's stderr goes to, as
    /// systemd names the journal's stream.
    pub journal: bool,
}

/// fds handed to the daemon the way systemd hands them for socket
/// activation: they become its fds 3, 4, … (without close-on-exec), named in
/// `LISTEN_FDNAMES` and counted in `LISTEN_FDS`; `LISTEN_PID` is the daemon's
/// own pid (the `$$` of a shell that then `exec`s it), unless `pid` is set.
#[derive(Debug, Default, Clone)]
pub struct Listen {
    /// (name, fd of the test process), in the order they are passed. The
    /// fds must stay open until the daemon is spawned.
    pub fds: Vec<(String, RawFd)>,
    /// `LISTEN_PID` naming another process than the daemon.
    pub pid: Option<u32>,
}

impl Listen {
    /// Sets `LISTEN_FDS`, `LISTEN_FDNAMES` (and `LISTEN_PID` if it is not the
    /// daemon's) on `cmd`, and puts the fds at 3, 4, … in the child.
    fn apply(&self, cmd: &mut Command) {
        let names: Vec<&str> = self.fds.iter().map(|(name, _)| name.as_str()).collect();
        cmd.env("LISTEN_FDS", self.fds.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"));
        if let Some(pid) = self.pid {
            cmd.env("LISTEN_PID", pid.to_string());
        }
        let sources: Vec<RawFd> = self.fds.iter().map(|&(_, fd)| fd).collect();
        // Allocated here: the child may not allocate between fork and exec.
        let mut moved = sources.clone();
        let cvt = |rc: libc::c_int| {
            if rc < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(rc)
            }
        };
        // SAFETY: the closure only calls fcntl and dup2, which are
        // async-signal-safe, and writes into memory allocated before fork.
        unsafe {
            cmd.pre_exec(move || {
                let first: RawFd = 3;
                let above = first + moved.len() as RawFd;
                // Out of the way first: a source may sit at one of the targets.
                for (slot, &fd) in moved.iter_mut().zip(&sources) {
                    *slot = cvt(libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above))?;
                }
                for (i, &fd) in moved.iter().enumerate() {
                    // The copy dup2 makes is not close-on-exec.
                    cvt(libc::dup2(fd, first + i as RawFd))?;
                }
                Ok(())
            });
        }
    }
}

/// What a finished command left.
#[derive(Debug)]
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// Panics with the whole outcome unless the exit code is `code`.
    pub fn assert_code(&self, code: i32) {
        assert_eq!(
            self.status.code(),
            Some(code),
            "expected exit code {code}, got {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }
}

#[derive(Debug)]
pub struct Sandbox {
    dir: TempDir,
    seq: AtomicUsize,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fifod-test-")
            .tempdir()
            .expect("create tempdir");
        Sandbox {
            dir,
            seq: AtomicUsize::new(0),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `<root>/<rel>`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    /// The default `[daemon] dir`: `<root>/run`.
    pub fn run_dir(&self) -> PathBuf {
        self.path("run")
    }

    /// `<root>/run/<name>`.
    pub fn fifo(&self, name: &str) -> PathBuf {
        self.run_dir().join(name)
    }

    /// `<root>/fifod.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.path("fifod.toml")
    }

    /// Writes `fifod.toml`; sets `[daemon] dir = "<root>/run"` unless the
    /// text already sets a `dir` in its `[daemon]` table. `{ROOT}` in the
    /// text is replaced by the sandbox root.
    pub fn write_config(&self, toml: &str) -> PathBuf {
        let toml = toml.replace("{ROOT}", &self.root().display().to_string());
        let dir_line = format!("dir = \"{}\"", self.run_dir().display());
        let mut out = String::new();
        let mut in_daemon = false;
        let mut daemon_header: Option<usize> = None;
        let mut has_dir = false;
        let lines: Vec<&str> = toml.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim();
            if t.starts_with('[') {
                in_daemon = t == "[daemon]";
                if in_daemon {
                    daemon_header = Some(i);
                }
            } else if in_daemon {
                let key = t.split('=').next().unwrap_or("").trim();
                if key == "dir" {
                    has_dir = true;
                }
            }
        }
        match (daemon_header, has_dir) {
            (_, true) => out.push_str(&toml),
            (Some(h), false) => {
                for (i, line) in lines.iter().enumerate() {
                    out.push_str(line);
                    out.push('\n');
                    if i == h {
                        out.push_str(&dir_line);
                        out.push('\n');
                    }
                }
            }
            (None, false) => {
                out.push_str("[daemon]\n");
                out.push_str(&dir_line);
                out.push_str("\n\n");
                out.push_str(&toml);
            }
        }
        let path = self.config_path();
        write_atomically(&path, &out);
        path
    }

    /// Writes `fifod.toml` byte for byte, only replacing `{RUN}` by the run
    /// dir (for tests that assert line/column positions).
    pub fn write_raw_config(&self, text: &str) -> PathBuf {
        let text = text.replace("{RUN}", &self.run_dir().display().to_string());
        let path = self.config_path();
        write_atomically(&path, &text);
        path
    }

    /// Writes the fragment `fifod.d/<name>` beside the config, byte for
    /// byte (0644); returns its path.
    pub fn write_fragment(&self, name: &str, text: &str) -> PathBuf {
        let dir = self.path("fifod.d");
        if !dir.exists() {
            fs::create_dir(&dir).expect("mkdir fifod.d");
        }
        let path = dir.join(name);
        write_atomically(&path, text);
        path
    }

    fn next_file(&self, stem: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        self.path(&format!("{stem}-{n}.log"))
    }

    /// A command for the binary with `args`, stdin from /dev/null and
    /// stdout/stderr redirected to fresh files in the sandbox (returned).
    pub fn command(&self, args: &[OsString], launch: &Launch) -> (Command, PathBuf, PathBuf) {
        let bin = launch.bin.clone().unwrap_or_else(|| PathBuf::from(BIN));
        // Through a shell for what must happen in the process that becomes
        // the daemon (`exec` keeps its pid).
        let mut script = String::new();
        if let Some(mask) = launch.umask {
            script.push_str(&format!("umask {mask:o}; "));
        }
        if launch.listen.as_ref().is_some_and(|l| l.pid.is_none()) {
            script.push_str("export LISTEN_PID=$$; ");
        }
        let mut cmd = if script.is_empty() {
            Command::new(bin)
        } else {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("{script}exec \"$0\" \"$@\""))
                .arg(bin);
            c
        };
        cmd.args(args);
        for var in CLEARED_ENV {
            cmd.env_remove(var);
        }
        for (k, v) in &launch.env {
            cmd.env(k, v);
        }
        if let Some(listen) = &launch.listen {
            listen.apply(&mut cmd);
        }
        if let Some((uid, gid)) = launch.user {
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(
            launch
                .cwd
                .clone()
                .unwrap_or_else(|| self.root().to_path_buf()),
        );
        let out_path = self.next_file("stdout");
        let err_path = self.next_file("stderr");
        let out = File::create(&out_path).expect("create stdout file");
        let err = File::create(&err_path).expect("create stderr file");
        if launch.journal {
            let md = err.metadata().expect("stat stderr file");
            cmd.env("JOURNAL_STREAM", format!("{}:{}", md.dev(), md.ino()));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        (cmd, out_path, err_path)
    }

    /// Runs the binary to completion (deadline `TIMEOUT`, then SIGKILL and panic).
    pub fn run_to_exit<S: Into<OsString> + Clone>(&self, args: &[S], launch: &Launch) -> Outcome {
        let args: Vec<OsString> = args.iter().cloned().map(Into::into).collect();
        let (mut cmd, out_path, err_path) = self.command(&args, launch);
        let mut child = cmd.spawn().expect("spawn fifod");
        let status = wait_child(&mut child, TIMEOUT);
        let stdout = fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = fs::read_to_string(&err_path).unwrap_or_default();
        match status {
            Some(status) => Outcome {
                status,
                stdout,
                stderr,
            },
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "fifod {args:?} did not exit within {TIMEOUT:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
                );
            }
        }
    }

    /// `<cmd> --config <root>/fifod.toml`: arguments for the binary.
    pub fn cmd_args(&self, cmd: &str) -> Vec<OsString> {
        vec![cmd.into(), "--config".into(), self.config_path().into()]
    }

    /// `fifod <cmd> --config <root>/fifod.toml` to completion.
    pub fn run_cmd(&self, cmd: &str, launch: &Launch) -> Outcome {
        self.run_to_exit(&self.cmd_args(cmd), launch)
    }

    /// `fifod run --config <root>/fifod.toml`, expected to exit on its own.
    pub fn run_expect_exit(&self, launch: &Launch) -> Outcome {
        self.run_cmd("run", launch)
    }
}

/// Replaces `path` with a file holding `text` in one step (a rename), so
/// that a daemon reading it at any moment (a reload) sees the old file or
/// the new one, never a partly written one.
fn write_atomically(path: &Path, text: &str) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    fs::write(&tmp, text).expect("write config");
    fs::rename(&tmp, path).expect("rename config into place");
}

/// Waits for `child` to exit, at most `timeout`.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return Some(st);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------
// Daemon
// ---------------------------------------------------------------------------

/// A running `fifod run`, killed with SIGKILL on drop if still alive.
#[derive(Debug)]
pub struct Daemon {
    pub sb: Sandbox,
    child: Child,
    log_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Daemon {
    /// New sandbox, `write_config(toml)`, `run --config`, wait for `ready:`.
    pub fn start(toml: &str) -> Daemon {
        Daemon::start_launched(toml, &Launch::default())
    }

    /// New sandbox, `write_config(toml)`, `run --config` with `launch`, wait
    /// for `ready:`.
    pub fn start_launched(toml: &str, launch: &Launch) -> Daemon {
        let sb = Sandbox::new();
        sb.write_config(toml);
        Daemon::start_with(sb, launch)
    }

    /// `run --config <sandbox>/fifod.toml` (config written by the caller).
    pub fn start_with(sb: Sandbox, launch: &Launch) -> Daemon {
        let args = sb.cmd_args("run");
        Daemon::start_args(sb, &args, launch)
    }

    /// Starts the binary with explicit arguments and waits for `ready:`.
    pub fn start_args(sb: Sandbox, args: &[OsString], launch: &Launch) -> Daemon {
        let mut d = Daemon::spawn_args(sb, args, launch);
        d.wait_ready();
        d
    }

    /// `run --config <sandbox>/fifod.toml`, without waiting for `ready:`.
    pub fn spawn_with(sb: Sandbox, launch: &Launch) -> Daemon {
        let args = sb.cmd_args("run");
        Daemon::spawn_args(sb, &args, launch)
    }

    /// Starts the binary with explicit arguments (no waiting).
    pub fn spawn_args(sb: Sandbox, args: &[OsString], launch: &Launch) -> Daemon {
        let (mut cmd, _out, log_path) = sb.command(args, launch);
        let child = cmd.spawn().expect("spawn fifod");
        Daemon {
            sb,
            child,
            log_path,
            status: None,
        }
    }

    /// Waits (deadline `TIMEOUT`) for `ready:` in the log; panics with the
    /// log if the daemon exits or the deadline passes first.
    pub fn wait_ready(&mut self) {
        let end = Instant::now() + TIMEOUT;
        loop {
            if self.log().contains("ready:") {
                return;
            }
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                self.status = Some(st);
                panic!(
                    "fifod exited with {st:?} before `ready:`\n--- log ---\n{}",
                    self.log()
                );
            }
            if Instant::now() >= end {
                panic!(
                    "fifod not ready within {TIMEOUT:?}\n--- log ---\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The file the daemon's stderr goes to (for logs too large to read
    /// whole).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// `<root>/run/<name>`.
    pub fn fifo(&self, name: &str) -> PathBuf {
        self.sb.fifo(name)
    }

    pub fn signal(&self, sig: Signal) {
        assert!(self.status.is_none(), "signal to an exited daemon");
        kill(Pid::from_raw(self.pid() as i32), sig).expect("kill");
    }

    /// Non-blocking: has it exited?
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits (deadline) for the daemon to exit; panics with the log if it
    /// does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(st) = self.status {
            return st;
        }
        match wait_child(&mut self.child, timeout) {
            Some(st) => {
                self.status = Some(st);
                st
            }
            None => panic!(
                "fifod did not exit within {timeout:?}\n--- log ---\n{}",
                self.log()
            ),
        }
    }

    /// Sends `sig` and waits (deadline `STOP_TIMEOUT`) for the exit.
    pub fn stop(&mut self, sig: Signal) -> ExitStatus {
        self.signal(sig);
        self.wait_exit(STOP_TIMEOUT)
    }

    /// Sends SIGTERM and waits (deadline `timeout`) for the exit; returns
    /// the status and how long the stop took.
    pub fn timed_stop(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let t0 = Instant::now();
        self.signal(Signal::SIGTERM);
        let st = self.wait_exit(timeout);
        (st, t0.elapsed())
    }

    /// Stops with SIGTERM and asserts exit code 0.
    pub fn stop_ok(&mut self) {
        let st = self.stop(Signal::SIGTERM);
        assert_eq!(
            st.code(),
            Some(0),
            "exit status {st:?}\n--- log ---\n{}",
            self.log()
        );
    }

    /// The final stats line for (route, sink).
    pub fn stats(&self, route: usize, sink: &str) -> Stats {
        parse_stats(&self.log(), route, sink)
    }

    /// Waits until the given pipes are empty and the daemon is idle
    /// (all threads sleeping, no I/O syscalls for several polls).
    pub fn wait_idle(&self, pipes: &[&File]) {
        wait_idle(self.pid(), pipes, TIMEOUT);
    }
}

impl Daemon {
    /// Kills the daemon with SIGKILL, as a crash would, waits for it, and
    /// gives its sandbox back (for the daemon started after the crash).
    pub fn kill9(mut self) -> Sandbox {
        let _ = self.child.kill();
        let status = wait_child(&mut self.child, TIMEOUT).expect("a killed fifod exits");
        self.status = Some(status);
        std::mem::take(&mut self.sb)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.status.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// FIFO I/O with deadlines (all descriptors are O_NONBLOCK)
// ---------------------------------------------------------------------------

/// Opens `path` for writing, non-blocking; retries (deadline) while there is
/// no reader (ENXIO) or no file yet.
pub fn open_writer(path: &Path) -> File {
    let end = Instant::now() + TIMEOUT;
    loop {
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => return f,
            Err(e)
                if (e.raw_os_error() == Some(libc::ENXIO)
                    || e.kind() == io::ErrorKind::NotFound)
                    && Instant::now() < end =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("open {} for writing: {e}", path.display()),
        }
    }
}

/// Opens `path` for reading, non-blocking (never blocks).
pub fn open_reader(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} for reading: {e}", path.display()))
}

/// poll(2) one descriptor for `events`, at most `timeout`; returns revents.
pub fn poll_one(f: &impl AsFd, events: PollFlags, timeout: Duration) -> PollFlags {
    let end = Instant::now() + timeout;
    loop {
        let ms = remaining(end).as_millis().min(1000) as u16;
        let mut fds = [PollFd::new(f.as_fd(), events)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) if Instant::now() < end => continue,
            Ok(0) => return PollFlags::empty(),
            Ok(_) => return fds[0].revents().unwrap_or(PollFlags::empty()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => panic!("poll: {e}"),
        }
    }
}

/// One non-blocking write.
pub fn try_write(f: &File, data: &[u8]) -> io::Result<usize> {
    let mut w = f;
    w.write(data)
}

/// Writes all of `data` before `end` (panics on deadline or error).
pub fn write_all(f: &File, data: &[u8], end: Instant) {
    let mut done = 0;
    while done < data.len() {
        match try_write(f, &data[done..]) {
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < end,
                    "write timed out after {done} of {} bytes",
                    data.len()
                );
                poll_one(f, PollFlags::POLLOUT, remaining(end));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("write: {e}"),
        }
    }
}

/// One read of up to `buf.len()` bytes, waiting (until `end`) for data;
/// returns 0 at EOF. Panics on deadline.
pub fn read_some(f: &File, buf: &mut [u8], end: Instant) -> usize {
    loop {
        let mut r = f;
        match r.read(buf) {
            Ok(n) => return n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < end, "read timed out");
                poll_one(f, PollFlags::POLLIN, remaining(end));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Reads exactly `n` bytes (deadline `timeout`); panics on EOF or deadline.
pub fn read_exact(f: &File, n: usize, timeout: Duration) -> Vec<u8> {
    let end = Instant::now() + timeout;
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let k = read_some(f, &mut out[got..], end);
        assert!(k > 0, "EOF after {got} of {n} bytes");
        got += k;
    }
    out
}

/// Reads until what was read ends with `suffix` (deadline `TIMEOUT`).
pub fn read_until(r: &File, suffix: &[u8]) -> Vec<u8> {
    let end = Instant::now() + TIMEOUT;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(suffix) {
        let n = read_some(r, &mut buf, end);
        assert!(n > 0, "EOF after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// Reads until EOF (deadline `timeout`).
pub fn read_to_eof(f: &File, timeout: Duration) -> Vec<u8> {
    let end = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * KIB];
    loop {
        let k = read_some(f, &mut buf, end);
        if k == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..k]);
    }
}

/// Writes `data` into `input` and reads it back from `output`.
pub fn relays(input: &Path, output: &Path, data: &[u8]) {
    let r = open_reader(output);
    let w = open_writer(input);
    write_all(&w, data, Instant::now() + TIMEOUT);
    assert_eq!(
        read_exact(&r, data.len(), TIMEOUT),
        data,
        "{} -> {}",
        input.display(),
        output.display()
    );
}

/// Reads `r` to its EOF (deadline `TIMEOUT`, so after fifod stopped or
/// closed it) and panics unless nothing more came; `what` names `r`.
pub fn assert_no_more(r: &File, what: &str) {
    let rest = read_to_eof(r, TIMEOUT);
    assert!(
        rest.is_empty(),
        "{what}: {} unexpected bytes after the stream: {:?}",
        rest.len(),
        String::from_utf8_lossy(&rest[..rest.len().min(200)])
    );
}

/// Bytes currently queued in the pipe behind `f` (FIONREAD works on either
/// end of a pipe).
pub fn pipe_pending(f: &File) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which is valid.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0, "FIONREAD: {}", io::Error::last_os_error());
    usize::try_from(n).expect("FIONREAD negative")
}

/// Process-wide I/O syscall counters and whether every thread sleeps.
fn activity(pid: u32) -> Option<(String, bool)> {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let counters: String = io
        .lines()
        .filter(|l| l.starts_with("rchar") || l.starts_with("wchar") || l.starts_with("sysc"))
        .collect::<Vec<_>>()
        .join(",");
    let mut all_sleeping = true;
    for entry in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = fs::read_to_string(entry.ok()?.path().join("stat")).ok()?;
        let state = stat[stat.rfind(')')? + 1..].trim_start().chars().next()?;
        if state != 'S' {
            all_sleeping = false;
        }
    }
    Some((counters, all_sleeping))
}

/// Waits until `pipes` are empty and the process has been idle (every
/// thread sleeping, I/O counters unchanged) for 5 consecutive polls.
pub fn wait_idle(pid: u32, pipes: &[&File], timeout: Duration) {
    let mut last: Option<String> = None;
    let mut stable = 0;
    let ok = wait_until(timeout, || {
        let empty = pipes.iter().all(|p| pipe_pending(p) == 0);
        match activity(pid) {
            Some((counters, true)) if empty => {
                if last.as_deref() == Some(counters.as_str()) {
                    stable += 1;
                } else {
                    stable = 0;
                    last = Some(counters);
                }
            }
            _ => {
                stable = 0;
                last = None;
            }
        }
        if stable >= 5 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(15));
        false
    });
    assert!(
        ok,
        "fifod (pid {pid}) never became idle with empty input pipes"
    );
}

// ---------------------------------------------------------------------------
// Threads with a deadline
// ---------------------------------------------------------------------------

/// Runs `f` on a thread; the result is fetched with `Joiner::join`.
pub fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Joiner<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    Joiner { rx }
}

#[derive(Debug)]
pub struct Joiner<T> {
    rx: std::sync::mpsc::Receiver<T>,
}

impl<T> Joiner<T> {
    /// The thread's result; panics if it panicked or missed the deadline.
    pub fn join(self, timeout: Duration) -> T {
        match self.rx.recv_timeout(timeout) {
            Ok(v) => v,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("thread did not finish within {timeout:?}")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("thread panicked (see its message above)")
            }
        }
    }
}
