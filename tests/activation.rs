//! Socket activation: FIFOs that the service manager made and passes as
//! fds 3, 4, … with `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`. The tests
//! play systemd's part: they make each FIFO (`ListenFIFO=`, `SocketMode=`),
//! hold it open read-write, and pass it to fifod with its pid preserved.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::sys::stat::Mode;
use nix::unistd::mkfifo;
use tempfile::TempDir;

use crate::common::{
    Daemon, IN_OUT, KIB, Launch, Listen, Node, Sandbox, TIMEOUT, Verifier, assert_logged,
    fifo_node, log_has_line, lstat, open_reader, open_writer, pattern, pipe_pending, read_exact,
    read_some, wait_log, wait_until, write_all, write_pattern,
};

/// The mode the "socket units" give their FIFOs; the configs leave fifod's
/// default (0600), so a chmod by fifod would show.
const SOCKET_MODE: u32 = 0o620;

/// systemd's side: a directory (as `RuntimeDirectory=` makes it) holding the
/// FIFOs of `ListenFIFO=` units, each held open read-write as systemd does.
struct Manager {
    dir: TempDir,
    fifos: Vec<(String, File)>,
}

impl Manager {
    fn new(names: &[&str]) -> Manager {
        let dir = tempfile::Builder::new()
            .prefix("fifod-manager-")
            .tempdir()
            .expect("create tempdir");
        let fifos = names
            .iter()
            .map(|&name| {
                let path = dir.path().join(name);
                mkfifo(&path, Mode::from_bits_truncate(0o600)).expect("mkfifo");
                fs::set_permissions(&path, fs::Permissions::from_mode(SOCKET_MODE)).expect("chmod");
                // As systemd opens a ListenFIFO= (std adds O_CLOEXEC).
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_NOFOLLOW)
                    .open(&path)
                    .expect("open FIFO read-write");
                (name.to_string(), file)
            })
            .collect();
        Manager { dir, fifos }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// systemd's own fd on the FIFO `name`.
    fn file(&self, name: &str) -> &File {
        &self
            .fifos
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no FIFO {name}"))
            .1
    }

    /// Every FIFO passed under its own name, in order, with fifod's pid.
    fn launch(&self) -> Launch {
        let fds: Vec<(&str, RawFd)> = self
            .fifos
            .iter()
            .map(|(name, file)| (name.as_str(), file.as_raw_fd()))
            .collect();
        passing(&fds, None)
    }

    /// What the directory holds.
    fn entries(&self) -> BTreeSet<String> {
        fs::read_dir(self.dir())
            .expect("read dir")
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    }

    /// Asserts the directory holds exactly the FIFOs the manager made, as it
    /// made them: same nodes, still FIFOs, still its mode.
    fn assert_untouched(&self, nodes: &[Node], log: &str) {
        let names: BTreeSet<String> = self.fifos.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(
            self.entries(),
            names,
            "{} holds more or less than the manager's FIFOs\n--- log ---\n{log}",
            self.dir().display()
        );
        assert_eq!(
            self.nodes(),
            nodes,
            "the manager's FIFOs changed\n--- log ---\n{log}"
        );
    }

    /// The state of every FIFO of the manager.
    fn nodes(&self) -> Vec<Node> {
        self.fifos
            .iter()
            .map(|(n, _)| fifo_node(&self.path(n)))
            .collect()
    }
}

/// A launch passing `fds` (named as given) with `LISTEN_PID` = `pid`, or
/// fifod's own pid.
fn passing(fds: &[(&str, RawFd)], pid: Option<u32>) -> Launch {
    Launch {
        listen: Some(Listen {
            fds: fds.iter().map(|&(n, fd)| (n.to_string(), fd)).collect(),
            pid,
        }),
        ..Launch::default()
    }
}

/// `[daemon] dir` is the manager's directory; `in` → `out`, default modes.
fn config(dir: &Path) -> String {
    format!(
        r#"
[daemon]
dir = "{}"

[fifo.in]

[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
"#,
        dir.display()
    )
}

fn assert_taken(m: &Manager, log: &str) {
    for (name, _) in &m.fifos {
        let at = format!("fifo {name} at {}:", m.path(name).display());
        assert!(
            log_has_line(log, &[&at, "passed by the service manager", "mode 0620"]),
            "fifod did not take {name} as passed\n--- log ---\n{log}"
        );
    }
}

#[test]
fn bytes_written_before_start_are_delivered() {
    let m = Manager::new(&["in", "out"]);
    let data = pattern(1, 0, 3000);
    // A writer was there before fifod: the bytes wait in the pipe systemd holds.
    write_all(m.file("in"), &data, Instant::now() + TIMEOUT);
    let mut d = Daemon::start_launched(&config(m.dir()), &m.launch());
    assert_taken(&m, &d.log());
    let reader = open_reader(&m.path("out"));
    assert_eq!(read_exact(&reader, data.len(), TIMEOUT), data);
    assert_eq!(pipe_pending(m.file("in")), 0, "bytes left in `in`");
    d.stop_ok();
}

#[test]
fn passed_fifos_are_left_in_place_at_stop() {
    let m = Manager::new(&["in", "out"]);
    let nodes = m.nodes();
    let capacity = |name: &str| {
        nix::fcntl::fcntl(m.file(name), nix::fcntl::FcntlArg::F_GETPIPE_SZ).expect("F_GETPIPE_SZ")
    };
    let sizes = [capacity("in"), capacity("out")];
    let mut d = Daemon::start_launched(&config(m.dir()), &m.launch());
    assert_eq!(
        m.nodes(),
        nodes,
        "fifod changed a passed FIFO at start (its config mode is 0600)\n--- log ---\n{}",
        d.log()
    );
    // No pipe_size in the config: the socket unit's size stays.
    assert_eq!([capacity("in"), capacity("out")], sizes, "{}", d.log());
    d.stop_ok();
    let log = d.log();
    // Same nodes, same mode; the lock and the control socket are gone.
    m.assert_untouched(&nodes, &log);
    for (name, _) in &m.fifos {
        let left = format!("left fifo {name} at {} in place", m.path(name).display());
        assert_logged(&log, &[&left, "belongs to the service manager"]);
    }
}

#[test]
fn restart_loses_nothing_written_while_fifod_is_down() {
    const SEED: u64 = 3;
    let (before, down, after) = (16 * KIB, 32 * KIB, 16 * KIB);
    let m = Manager::new(&["in", "out"]);
    let toml = config(m.dir());
    let mut d = Daemon::start_launched(&toml, &m.launch());
    // A writer and a reader that stay across the restart.
    let writer = open_writer(&m.path("in"));
    let reader = open_reader(&m.path("out"));
    let mut verifier = Verifier::new(SEED, 0);
    let deliver = |verifier: &mut Verifier, offset: usize, len: usize| {
        write_pattern(&writer, SEED, offset as u64, len, Instant::now() + TIMEOUT);
        let got = read_exact(&reader, len, TIMEOUT);
        verifier.check(&got).unwrap();
    };
    deliver(&mut verifier, 0, before);
    d.stop_ok();

    // No fifod: systemd's fd keeps the FIFO open, so the write neither fails
    // nor blocks, and the bytes wait in the pipe.
    write_pattern(&writer, SEED, before as u64, down, Instant::now() + TIMEOUT);
    assert_eq!(pipe_pending(&writer), down);

    let mut d = Daemon::start_launched(&toml, &m.launch());
    assert_taken(&m, &d.log());
    let got = read_exact(&reader, down, TIMEOUT);
    verifier.check(&got).unwrap();
    deliver(&mut verifier, before + down, after);
    d.stop_ok();
    // Nothing delivered twice: the reader got the stream and no more.
    assert_eq!(pipe_pending(&reader), 0, "bytes beyond the stream in `out`");
}

/// Runs fifod expecting it to refuse to start: exit 1 with an error that
/// contains all of `needles`, and the manager's directory as it was.
fn assert_refused(m: &Manager, toml: &str, launch: &Launch, needles: &[&str]) {
    let nodes = m.nodes();
    let sb = Sandbox::new();
    sb.write_config(toml);
    let out = sb.run_expect_exit(launch);
    out.assert_code(1);
    assert_logged(&out.stderr, needles);
    m.assert_untouched(&nodes, &out.stderr);
}

#[test]
fn a_passed_fd_that_is_not_a_fifo_is_refused() {
    let m = Manager::new(&["in", "out"]);
    let toml = config(m.dir());
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .unwrap();
    let (socket, _peer) = UnixStream::pair().unwrap();
    let in_fd = m.file("in").as_raw_fd();
    let out_fd = m.file("out").as_raw_fd();
    let cases = [
        ([("in", null.as_raw_fd()), ("out", out_fd)], "\"in\""),
        ([("in", in_fd), ("out", socket.as_raw_fd())], "\"out\""),
    ];
    for (fds, name) in cases {
        assert_refused(&m, &toml, &passing(&fds, None), &[name, "not a FIFO"]);
    }
}

#[test]
fn a_passed_name_no_fifo_claims_is_refused() {
    let m = Manager::new(&["in", "out"]);
    let fds = [
        ("in", m.file("in").as_raw_fd()),
        ("bogus", m.file("out").as_raw_fd()),
    ];
    assert_refused(
        &m,
        &config(m.dir()),
        &passing(&fds, None),
        &["\"bogus\"", "[fifo.bogus]"],
    );
}

#[test]
fn a_passed_fifo_that_is_not_the_one_at_the_path_is_refused() {
    let m = Manager::new(&["in", "out"]);
    let in_fd = m.file("in").as_raw_fd();
    let out_fd = m.file("out").as_raw_fd();
    // Names swapped: another FIFO is at each configured path.
    let at_in = format!("refusing {}", m.path("in").display());
    assert_refused(
        &m,
        &config(m.dir()),
        &passing(&[("in", out_fd), ("out", in_fd)], None),
        &[&at_in, "passed as \"in\"", "not the one at this path"],
    );
    // Nothing at the configured path, and `in` already taken when `out`
    // fails: fifod creates nothing there and leaves `in` alone.
    let toml = config(m.dir()).replace("[fifo.out]", "[fifo.out]\npath = \"missing\"");
    let at_missing = format!("refusing {}", m.path("missing").display());
    assert_refused(
        &m,
        &toml,
        &m.launch(),
        &[&at_missing, "passed as \"out\"", "not the one at this path"],
    );
}

#[test]
fn fds_for_another_pid_are_ignored() {
    let m = Manager::new(&["in", "out"]);
    let nodes = m.nodes();
    let waiting = pattern(5, 0, 1000);
    write_all(m.file("in"), &waiting, Instant::now() + TIMEOUT);
    let in_fd = m.file("in").as_raw_fd();
    let out_fd = m.file("out").as_raw_fd();
    // Taken, the fds would be refused (they are not at the configured paths,
    // in fifod's own dir), and so would names no [fifo.NAME] claims.
    for names in [["in", "out"], ["nosuch", "other"]] {
        let launch = passing(
            &[(names[0], in_fd), (names[1], out_fd)],
            Some(std::process::id()),
        );
        let mut d = Daemon::start_launched(IN_OUT, &launch);
        let log = d.log();
        for name in ["in", "out"] {
            let path = d.fifo(name);
            assert!(
                log_has_line(
                    &log,
                    &[&format!("created fifo {name} at {}", path.display())]
                ),
                "fifod did not create {name} itself\n--- log ---\n{log}"
            );
            assert_eq!(fifo_node(&path).mode, 0o600, "{}", path.display());
        }
        let data = pattern(6, 0, 2000);
        write_all(&open_writer(&d.fifo("in")), &data, Instant::now() + TIMEOUT);
        let reader = open_reader(&d.fifo("out"));
        assert_eq!(read_exact(&reader, data.len(), TIMEOUT), data);
        d.stop_ok();
        assert!(!d.sb.run_dir().exists(), "fifod left its own dir");
        // The passed FIFOs were not read, changed or removed.
        m.assert_untouched(&nodes, &d.log());
        assert_eq!(pipe_pending(m.file("in")), waiting.len());
    }
}

#[test]
fn processes_inherit_neither_the_passed_fds_nor_listen_variables() {
    let m = Manager::new(&["in", "out"]);
    let toml = format!(
        r#"
[daemon]
dir = "{}"

[fifo.in]
[fifo.out]

[process.probe]
command = ["sh", "-c", "echo ${{LISTEN_PID-none}} ${{LISTEN_FDS-none}} ${{LISTEN_FDNAMES-none}}; for fd in 3 4; do if [ -e /proc/self/fd/$fd ]; then echo fd $fd; fi; done; echo end"]
restart = "never"

[[route]]
from = ["probe"]
to = ["out"]
"#,
        m.dir().display()
    );
    let mut d = Daemon::start_launched(&toml, &m.launch());
    assert_taken(&m, &d.log());
    let reader = open_reader(&m.path("out"));
    let end = Instant::now() + TIMEOUT;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(b"end\n") {
        let n = read_some(&reader, &mut buf, end);
        assert!(n > 0, "EOF after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&got), "none none none\nend\n");
    d.stop_ok();
}

#[test]
fn a_passed_fifo_systemd_removed_is_not_made_again() {
    let m = Manager::new(&["in", "out"]);
    let out_node = fifo_node(&m.path("out"));
    // `extra` is fifod's own, in the same directory: what fifod does when it
    // is removed shows when fifod has looked at the directory again.
    let toml = config(m.dir()).replace("[fifo.out]", "[fifo.extra]\n\n[fifo.out]");
    let mut d = Daemon::start_launched(&toml, &m.launch());
    assert_taken(&m, &d.log());
    // As a socket unit's RemoveOnStop= does while fifod runs.
    fs::remove_file(m.path("in")).unwrap();
    fs::remove_file(m.path("extra")).unwrap();
    let remade = format!("fifo extra: made again at {}", m.path("extra").display());
    wait_log(&d, "fifod to make `extra` again", TIMEOUT, |log| {
        log.contains(&remade)
    });
    assert!(
        lstat(&m.path("in")).is_none(),
        "fifod made the passed FIFO `in` again when another FIFO of its dir went\n--- log ---\n{}",
        d.log()
    );
    // A reload, which makes again what vanished, must not make it either.
    assert_eq!(d.reload(), Ok(()), "--- log ---\n{}", d.log());
    assert!(
        lstat(&m.path("in")).is_none(),
        "fifod made the passed FIFO `in` again on SIGHUP\n--- log ---\n{}",
        d.log()
    );
    d.stop_ok();
    assert_eq!(
        m.entries(),
        BTreeSet::from(["out".to_string()]),
        "\n--- log ---\n{}",
        d.log()
    );
    assert_eq!(fifo_node(&m.path("out")), out_node);
}

/// Bytes in FIFOs the service manager holds outlive fifod: a stop does not
/// wait for a reader to take them (the config's long `shutdown_timeout`
/// would show), and reports them as kept, not as lost.
#[test]
fn bytes_in_passed_fifos_are_reported_as_kept_and_not_waited_for() {
    let m = Manager::new(&["in", "out"]);
    let toml = config(m.dir()).replace("[daemon]\n", "[daemon]\nshutdown_timeout = \"60s\"\n");
    let mut d = Daemon::start_launched(&toml, &m.launch());
    let writer = open_writer(&m.path("in"));
    write_pattern(&writer, 5, 0, 3000, Instant::now() + TIMEOUT);
    assert!(
        wait_until(TIMEOUT, || pipe_pending(m.file("out")) == 3000),
        "the bytes did not reach `out`\n{}",
        d.log()
    );
    let (status, _) = d.timed_stop(TIMEOUT);
    assert!(status.success(), "{status:?}\n{}", d.log());
    let log = d.log();
    assert!(
        log_has_line(
            &log,
            &["out: 3000 bytes kept in the FIFO, which the service manager holds"]
        ),
        "{log}"
    );
    assert!(!log.contains("undelivered ("), "{log}");
    // Still there for the next reader.
    assert_eq!(pipe_pending(m.file("out")), 3000);
}
