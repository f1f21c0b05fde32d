//! A hostile filesystem: what others put at, or do to, the paths fifod
//! manages. Every case is refused with an error that names the path and
//! says why, and nothing fifod does not own is touched: not its content, its
//! mode, its owner, not even opened (inotify sees every open).
//!
//! `lifecycle.rs` has intruders at an absolute FIFO path outside `dir`; here
//! they sit inside `dir`, among FIFOs fifod makes in the same start, or
//! arrive while fifod runs.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, lchown, symlink};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::Signal;
use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use crate::common::{
    Daemon, LOCK, Launch, Outcome, Sandbox, TIMEOUT, assert_fifo, assert_logged, attach_strace,
    detach_strace, have_strace, is_root, log_has_line, lstat, mkdir_mode, mkfifo_mode, mode_of,
    names, names_in, nobody, open_reader, open_writer, pipe_pending, read_exact, read_to_eof,
    read_until, relays, snapshot, try_write, wait_log, wait_until, write_all, write_mode,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Records every access to the entries of one directory (inotify): an open,
/// a read, a write, a chmod, a removal. Set it up after the last snapshot
/// and read it before the next one: taking a snapshot opens files too.
#[derive(Debug)]
struct Touches {
    inotify: Inotify,
}

impl Touches {
    fn watch(dir: &Path) -> Touches {
        let inotify =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).expect("inotify_init");
        inotify
            .add_watch(
                dir,
                AddWatchFlags::IN_ALL_EVENTS
                    | AddWatchFlags::IN_ONLYDIR
                    | AddWatchFlags::IN_DONT_FOLLOW,
            )
            .unwrap_or_else(|e| panic!("watch {}: {e}", dir.display()));
        Touches { inotify }
    }

    /// The events so far on entry `name` (and drops the others).
    fn on(&self, name: &str) -> Vec<AddWatchFlags> {
        let mut out = Vec::new();
        loop {
            match self.inotify.read_events() {
                Ok(events) if !events.is_empty() => out.extend(
                    events
                        .into_iter()
                        .filter(|e| e.name.as_deref() == Some(OsStr::new(name)))
                        .map(|e| e.mask),
                ),
                Ok(_) | Err(Errno::EAGAIN) => return out,
                Err(Errno::EINTR) => {}
                Err(e) => panic!("read inotify events: {e}"),
            }
        }
    }
}

/// Runs fifod in `sb` to its exit; panics with its stderr unless it exits
/// 1 with a line of stderr that has all of `needles`.
fn run_refused(sb: &Sandbox, needles: &[&str]) -> Outcome {
    let out = sb.run_expect_exit(&Launch::default());
    out.assert_code(1);
    assert_logged(&out.stderr, needles);
    out
}

/// Spawns `run` and waits for either its exit or `ready:`; returns the
/// daemon (exited or running).
fn start_or_exit(sb: Sandbox) -> Daemon {
    let mut d = Daemon::spawn_with(sb, &Launch::default());
    assert!(
        wait_until(TIMEOUT, || d.try_exited().is_some()
            || d.log().contains("ready:")),
        "fifod neither exited nor became ready\n--- log ---\n{}",
        d.log()
    );
    d
}

// ---------------------------------------------------------------------------
// Something else at a FIFO path inside dir, at start
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intruder {
    /// To a stand-in for /etc/passwd, made in the sandbox.
    SymlinkToFile,
    SymlinkToFifo,
    DanglingSymlink,
    RegularFile,
    Directory,
    Socket,
    CharDevice,
}

impl Intruder {
    /// What fifod calls it.
    fn kind(self) -> &'static str {
        match self {
            Intruder::SymlinkToFile | Intruder::SymlinkToFifo | Intruder::DanglingSymlink => {
                "a symbolic link"
            }
            Intruder::RegularFile => "a regular file",
            Intruder::Directory => "a directory",
            Intruder::Socket => "a socket",
            Intruder::CharDevice => "a character device",
        }
    }
}

#[derive(Debug, Default)]
struct Planted {
    /// A symlink's target, in the scratch directory.
    target: Option<PathBuf>,
    listener: Option<UnixListener>,
}

/// Puts `intruder` at `path`; None if it cannot be made here.
fn plant(intruder: Intruder, path: &Path, scratch: &Path) -> Option<Planted> {
    let mut planted = Planted::default();
    match intruder {
        Intruder::SymlinkToFile => {
            let target = scratch.join("passwd");
            write_mode(&target, b"root:x:0:0:root:/root:/bin/sh\n", 0o644);
            symlink(&target, path).unwrap();
            planted.target = Some(target);
        }
        Intruder::SymlinkToFifo => {
            let target = scratch.join("their.fifo");
            mkfifo_mode(&target, 0o640);
            symlink(&target, path).unwrap();
            planted.target = Some(target);
        }
        Intruder::DanglingSymlink => {
            let target = scratch.join("absent");
            symlink(&target, path).unwrap();
            planted.target = Some(target);
        }
        Intruder::RegularFile => write_mode(path, b"precious data\n", 0o644),
        Intruder::Directory => {
            mkdir_mode(path, 0o755);
            fs::write(path.join("inside"), b"inside\n").unwrap();
        }
        Intruder::Socket => planted.listener = Some(UnixListener::bind(path).unwrap()),
        Intruder::CharDevice => {
            if !is_root() {
                println!("note: skipping the character device: mknod needs root");
                return None;
            }
            // The same device as /dev/null: harmless even if opened.
            mknod(
                path,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o600),
                makedev(1, 3),
            )
            .expect("mknod");
        }
    }
    Some(planted)
}

/// `intruder` sits at FIFO `b`'s path in an existing `dir`, after FIFO `a`
/// and FIFO `early` (in a subdirectory fifod makes) and before `c`. fifod
/// must exit 1 naming the path and what is there; leave the intruder, and a
/// symlink's target, untouched and unopened; and remove everything it made
/// in this start.
fn assert_refused_inside_dir(intruder: Intruder) {
    let sb = Sandbox::new();
    let run = sb.run_dir();
    mkdir_mode(&run, 0o755);
    let scratch = sb.path("scratch");
    mkdir_mode(&scratch, 0o755);
    let victim = run.join("b");
    let Some(planted) = plant(intruder, &victim, &scratch) else {
        return;
    };
    // Were fifod to follow a symlink, the chown and chmod it does on a FIFO
    // would show on the target.
    let owner = if is_root() {
        format!("owner = {}\n", nobody().0)
    } else {
        String::new()
    };
    sb.write_config(&format!(
        r#"
[fifo.a]

[fifo.early]
path = "made/early"

[fifo.b]
mode = "0666"
{owner}
[fifo.c]

[[route]]
from = ["a"]
to = ["early", "b", "c"]
"#
    ));
    let before = snapshot(&victim);
    let target_before = planted
        .target
        .as_deref()
        .filter(|t| lstat(t).is_some())
        .map(snapshot);
    let in_run = Touches::watch(&run);
    let in_scratch = Touches::watch(&scratch);

    let out = sb.run_expect_exit(&Launch::default());

    let what = format!("{intruder:?}");
    out.assert_code(1);
    assert!(!out.stderr.contains("panicked"), "{what}: {}", out.stderr);
    let refusal = format!("refusing {}: it is {}", victim.display(), intruder.kind());
    assert!(
        log_has_line(&out.stderr, &[&refusal]),
        "{what}: no line with {refusal:?}:\n{}",
        out.stderr
    );
    assert_eq!(in_run.on("b"), vec![], "{what}: fifod touched it");
    if let Some(target) = &planted.target {
        let name = target.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            in_scratch.on(name),
            vec![],
            "{what}: fifod followed the symlink to {}",
            target.display()
        );
    }
    assert_eq!(snapshot(&victim), before, "{what}: it changed");
    match (&planted.target, target_before) {
        (Some(target), Some(was)) => {
            assert_eq!(snapshot(target), was, "{what}: the target changed");
        }
        (Some(target), None) => assert!(
            lstat(target).is_none(),
            "{what}: fifod created the dangling symlink's target"
        ),
        _ => {}
    }
    if let Some(listener) = &planted.listener {
        // Still the socket its owner listens on.
        let _client = UnixStream::connect(&victim).expect("connect to the socket");
        listener.accept().expect("accept");
    }
    assert_eq!(
        names_in(&run),
        names(&["b"]),
        "{what}: fifod left what it made in this start\n{}",
        out.stderr
    );
}

#[test]
fn symlink_to_a_stand_in_for_etc_passwd_inside_dir_is_refused_and_not_followed() {
    assert_refused_inside_dir(Intruder::SymlinkToFile);
}

#[test]
fn symlink_to_another_fifo_inside_dir_is_refused_and_not_followed() {
    assert_refused_inside_dir(Intruder::SymlinkToFifo);
}

#[test]
fn dangling_symlink_inside_dir_is_refused_and_its_target_not_created() {
    assert_refused_inside_dir(Intruder::DanglingSymlink);
}

#[test]
fn regular_file_inside_dir_is_refused_and_unopened() {
    assert_refused_inside_dir(Intruder::RegularFile);
}

#[test]
fn directory_inside_dir_is_refused_and_unopened() {
    assert_refused_inside_dir(Intruder::Directory);
}

#[test]
fn unix_socket_inside_dir_is_refused_and_still_listening() {
    assert_refused_inside_dir(Intruder::Socket);
}

#[test]
fn char_device_inside_dir_is_refused_and_never_opened() {
    assert_refused_inside_dir(Intruder::CharDevice);
}

// ---------------------------------------------------------------------------
// Something else at a FIFO path while fifod runs
// ---------------------------------------------------------------------------

const TWO_ROUTES: &str = r#"
[fifo.in]

[fifo.out]
mode = "0640"

[fifo.in2]

[fifo.out2]

[[route]]
from = ["in"]
to = ["out"]

[[route]]
from = ["in2"]
to = ["out2"]
"#;

/// Renames `from` over `d`'s FIFO `name` and waits for fifod to refuse what
/// is there now (`kind`).
fn swap_in(d: &Daemon, from: &Path, name: &str, kind: &str) {
    let path = d.fifo(name);
    fs::rename(from, &path).unwrap();
    let refusal = format!("refusing {}: it is {kind}", path.display());
    wait_log(d, &refusal, TIMEOUT, |log| log_has_line(log, &[&refusal]));
}

#[test]
fn regular_file_renamed_over_a_fifo_while_running_is_left_alone_and_logged() {
    let mut d = Daemon::start(TWO_ROUTES);
    let out = d.fifo("out");
    let intruder = d.sb.path("intruder");
    // Another mode than the FIFO's 0640: a chmod would show.
    write_mode(&intruder, b"someone else's\n", 0o644);
    swap_in(&d, &intruder, "out", "a regular file");
    let before = snapshot(&out);
    assert_logged(
        &d.log(),
        &["fifo out:", &out.display().to_string(), "someone else"],
    );

    // fifod goes on serving the rest.
    relays(&d.fifo("in2"), &d.fifo("out2"), b"still serving\n");

    d.stop_ok();
    let log = d.log();
    assert_eq!(snapshot(&out), before, "the file was changed");
    assert_logged(
        &log,
        &[&format!(
            "not removing {} (fifo out): it was replaced by a regular file",
            out.display()
        )],
    );
    assert_eq!(names_in(&d.sb.run_dir()), names(&["out"]), "{log}");
}

/// What fifod does when someone removes a FIFO while it runs: it makes it
/// again at once (inotify), with its configured mode, logs it, relays
/// through the new node, and removes that one at stop.
#[test]
fn a_removed_fifo_is_made_again_at_once_and_removed_at_stop() {
    let mut d = Daemon::start(TWO_ROUTES);
    let (input, output) = (d.fifo("in"), d.fifo("out"));
    relays(&input, &output, b"before\n");
    let old = [snapshot(&input).ino, snapshot(&output).ino];

    fs::remove_file(&input).unwrap();
    fs::remove_file(&output).unwrap();
    let remade = |p: &Path, name: &str| format!("fifo {name}: made again at {}", p.display());
    let log = wait_log(&d, "both FIFOs made again", TIMEOUT, |log| {
        log_has_line(log, &[&remade(&input, "in")]) && log_has_line(log, &[&remade(&output, "out")])
    });
    for (name, path) in [("in", &input), ("out", &output)] {
        assert_logged(
            &log,
            &[
                &format!("fifo {name}: {}", path.display()),
                "removed or replaced by someone else",
            ],
        );
    }
    for (path, old_ino, mode) in [(&input, old[0], 0o600), (&output, old[1], 0o640)] {
        let md = lstat(path).unwrap_or_else(|| panic!("{} not made again", path.display()));
        assert!(md.file_type().is_fifo(), "{} is no FIFO", path.display());
        assert_ne!(md.ino(), old_ino, "{}: the same node?", path.display());
        assert_eq!(md.mode() & 0o7777, mode, "{}: mode", path.display());
    }
    relays(&input, &output, b"through the new nodes\n");

    d.stop_ok();
    let log = d.log();
    for (name, path) in [("in", &input), ("out", &output)] {
        assert_logged(
            &log,
            &[&format!("removed fifo {name} at {}", path.display())],
        );
        assert!(lstat(path).is_none(), "{} left", path.display());
    }
    assert!(!log.contains("already gone"), "{log}");
    assert!(lstat(&d.sb.run_dir()).is_none(), "dir left\n{log}");
}

/// Once the intruder goes, the path is free and the FIFO comes back at
/// once: the removal is itself a change in the directory. (The error logged
/// while the intruder is there says a SIGHUP is needed; it is not.)
#[test]
fn the_fifo_is_made_again_once_the_file_that_took_its_path_is_removed() {
    let mut d = Daemon::start(TWO_ROUTES);
    let out = d.fifo("out");
    let intruder = d.sb.path("intruder");
    write_mode(&intruder, b"for a while\n", 0o644);
    swap_in(&d, &intruder, "out", "a regular file");
    fs::remove_file(&out).unwrap();
    let remade = format!("fifo out: made again at {}", out.display());
    wait_log(&d, &remade, TIMEOUT, |log| log_has_line(log, &[&remade]));
    assert_fifo(&out, 0o640);
    relays(&d.fifo("in"), &out, b"back again\n");
    d.stop_ok();
    assert!(lstat(&out).is_none(), "out left\n{}", d.log());
}

#[test]
fn symlink_renamed_over_a_fifo_while_running_is_never_followed_nor_removed() {
    let mut d = Daemon::start(TWO_ROUTES);
    let out = d.fifo("out");
    let scratch = d.sb.path("scratch");
    mkdir_mode(&scratch, 0o755);
    let target = scratch.join("passwd");
    write_mode(&target, b"root:x:0:0:root:/root:/bin/sh\n", 0o644);
    let link = d.sb.path("link");
    symlink(&target, &link).unwrap();
    let target_before = snapshot(&target);
    let touches = Touches::watch(&scratch);

    swap_in(&d, &link, "out", "a symbolic link");
    let link_before = snapshot(&out);
    relays(&d.fifo("in2"), &d.fifo("out2"), b"still serving\n");
    d.stop_ok();

    let log = d.log();
    assert_eq!(touches.on("passwd"), vec![], "fifod followed the symlink");
    assert_eq!(snapshot(&target), target_before, "the target changed");
    assert_eq!(snapshot(&out), link_before, "the symlink changed");
    assert_logged(
        &log,
        &[&format!(
            "not removing {} (fifo out): it was replaced by a symbolic link",
            out.display()
        )],
    );
    assert_eq!(names_in(&d.sb.run_dir()), names(&["out"]), "{log}");
}

#[test]
fn fifo_of_another_user_renamed_over_a_fifo_while_running_is_not_adopted() {
    if !is_root() {
        println!("note: skipped: a FIFO of another user needs root to make");
        return;
    }
    let (uid, gid) = nobody();
    let mut d = Daemon::start(TWO_ROUTES);
    let out = d.fifo("out");
    let theirs = d.sb.path("theirs");
    mkfifo_mode(&theirs, 0o644);
    std::os::unix::fs::chown(&theirs, Some(uid), Some(gid)).unwrap();
    swap_in(&d, &theirs, "out", &format!("a FIFO owned by uid {uid}"));
    let before = snapshot(&out);
    d.stop_ok();
    let log = d.log();
    assert_eq!(snapshot(&out), before, "their FIFO changed");
    assert_logged(
        &log,
        &[&format!(
            "not removing {} (fifo out): it was replaced by a FIFO",
            out.display()
        )],
    );
}

/// README: "writers still connected to the old node are read to their end".
#[test]
fn a_writer_still_connected_to_a_removed_input_is_read_to_its_end() {
    let mut d = Daemon::start(TWO_ROUTES);
    let (input, output) = (d.fifo("in"), d.fifo("out"));
    let r = open_reader(&output);
    let w = open_writer(&input);
    write_all(&w, b"before\n", Instant::now() + TIMEOUT);
    assert_eq!(read_exact(&r, 7, TIMEOUT), b"before\n");

    fs::remove_file(&input).unwrap();
    let remade = format!("fifo in: made again at {}", input.display());
    wait_log(&d, &remade, TIMEOUT, |log| log_has_line(log, &[&remade]));
    write_to_removed_node(&d, &w, &r, b"late\n");
    drop(w);
    relays(&input, &output, b"new\n");
    d.stop_ok();
}

/// Writes `line` through `w`, a writer still connected to a removed input's
/// old node, and reads it from `r`: the write must not fail with EPIPE (a
/// shell writer would die of SIGPIPE).
fn write_to_removed_node(d: &Daemon, w: &std::fs::File, r: &std::fs::File, line: &[u8]) {
    match try_write(w, line) {
        Ok(n) if n == line.len() => {}
        Ok(n) => panic!("short write of {n} bytes"),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => panic!(
            "the writer still connected to the removed input got EPIPE\n--- log ---\n{}",
            d.log()
        ),
        Err(e) => panic!("write: {e}"),
    }
    assert_eq!(read_exact(r, line.len(), TIMEOUT), line);
}

/// A reload while a writer is still connected to the removed node goes on
/// reading that node: the writer sees no EPIPE and its bytes arrive.
#[test]
fn a_writer_still_connected_to_a_removed_input_outlives_a_reload() {
    let mut d = Daemon::start(TWO_ROUTES);
    let (input, output) = (d.fifo("in"), d.fifo("out"));
    let r = open_reader(&output);
    let w = open_writer(&input);
    fs::remove_file(&input).unwrap();
    let remade = format!("fifo in: made again at {}", input.display());
    wait_log(&d, &remade, TIMEOUT, |log| log_has_line(log, &[&remade]));

    // An unrelated change: the second route goes.
    let mut config = TWO_ROUTES.replace("[[route]]\nfrom = [\"in2\"]\nto = [\"out2\"]\n", "");
    config.push_str("\n[fifo.spare]\n");
    d.reload_ok(&config);
    write_to_removed_node(&d, &w, &r, b"after the reload\n");
    drop(w);
    relays(&input, &output, b"new\n");
    d.stop_ok();
}

/// One fifod per directory, always: after someone removes its whole
/// directory, fifod makes it again with its lock before its FIFOs, and a
/// second fifod on that directory is refused.
#[test]
fn a_removed_directory_is_made_again_with_its_lock() {
    let mut d = Daemon::start(TWO_ROUTES);
    let dir = d.sb.run_dir();
    let input = d.fifo("in");
    fs::remove_dir_all(&dir).unwrap();
    let remade = format!("fifo in: made again at {}", input.display());
    wait_log(&d, &remade, TIMEOUT, |log| log_has_line(log, &[&remade]));
    assert!(
        lstat(&dir.join(LOCK)).is_some_and(|m| m.file_type().is_file()),
        "no lock in the directory made again\n--- log ---\n{}",
        d.log()
    );
    let second = d.sb.run_expect_exit(&Launch::default());
    second.assert_code(1);
    assert_logged(
        &second.stderr,
        &[&format!(
            "another fifod is already running on {}",
            dir.display()
        )],
    );
    relays(&input, &d.fifo("out"), b"still the only one\n");
    d.stop_ok();
}

/// At stop, fifod moves each of its nodes to a private name before it
/// looks at it and unlinks it: a node swapped in at the path in between is
/// never the one removed. strace shows no unlink of a managed name.
#[test]
fn removal_unlinks_only_what_it_moved_aside_and_checked() {
    if !have_strace() {
        println!("note: skipped: strace is not installed");
        return;
    }
    let mut d = Daemon::start(TWO_ROUTES);
    let trace = d.sb.path("strace.out");
    let strace = attach_strace(
        d.pid(),
        &trace,
        &["trace=unlink,unlinkat,rename,renameat,renameat2"],
    );
    let dir = d.sb.run_dir();
    d.stop_ok();
    detach_strace(strace);
    let traced = fs::read_to_string(&trace).unwrap_or_default();
    let unlinked_by_name: Vec<&str> = traced
        .lines()
        .filter(|l| l.contains("unlink"))
        .filter(|l| {
            ["in", "out", "in2", "out2", LOCK, "control.sock"]
                .iter()
                .any(|n| l.contains(&format!(", \"{n}\"")))
        })
        .collect();
    assert!(
        unlinked_by_name.is_empty(),
        "fifod unlinked a managed name directly:\n{}",
        unlinked_by_name.join("\n")
    );
    let moved_aside = traced
        .lines()
        .filter(|l| l.contains("rename") && l.contains(".fifod-new-"))
        .count();
    assert!(moved_aside >= 4, "nothing was moved aside:\n{traced}");
    assert!(lstat(&dir).is_none(), "{} left", dir.display());
}

/// A FIFO is made under a private name and renamed into place once fifod
/// holds it: a reader that opens it the moment it appears never reads an
/// EOF (which it would if it came before fifod's own open).
#[test]
fn a_fifo_is_never_seen_before_fifod_holds_it() {
    let mut d = Daemon::start(TWO_ROUTES);
    let input = d.fifo("in");
    for round in 0..100 {
        fs::remove_file(&input).unwrap();
        let end = Instant::now() + TIMEOUT;
        let reader = loop {
            match fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&input)
            {
                Ok(f) => break f,
                Err(e) if e.kind() == io::ErrorKind::NotFound && Instant::now() < end => {}
                Err(e) => panic!("round {round}: {e}\n--- log ---\n{}", d.log()),
            }
        };
        let mut byte = [0u8; 1];
        match io::Read::read(&mut &reader, &mut byte) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Ok(0) => panic!(
                "round {round}: EOF: the FIFO was there before fifod held it\n--- log ---\n{}",
                d.log()
            ),
            other => panic!("round {round}: {other:?}"),
        }
        assert!(
            !names_in(&d.sb.run_dir())
                .iter()
                .any(|n| n.to_string_lossy().starts_with(".fifod-new")),
            "a private name is left in the directory"
        );
    }
    relays(&input, &d.fifo("out"), b"still relayed\n");
    d.stop_ok();
}

/// After making or adopting a FIFO, fifod never opens its path again: an
/// end of session, an output's next session and a reload go through a
/// handle on the node itself, so nothing swapped in at the path is opened.
#[test]
fn fifod_never_opens_a_managed_path_by_name_once_it_holds_the_node() {
    if !have_strace() {
        println!("note: skipped: strace is not installed");
        return;
    }
    let config = |mode: &str| {
        format!(
            "[fifo.in]\n[fifo.out]\nmode = \"{mode}\"\n\n[[route]]\nfrom = [\"in\"]\nto = [\"out\"]\neof = \"forward\"\n"
        )
    };
    let mut d = Daemon::start(&config("0640"));
    let trace = d.sb.path("strace.out");
    let strace = attach_strace(d.pid(), &trace, &["trace=open,openat,openat2"]);
    let (input, output) = (d.fifo("in"), d.fifo("out"));
    // A session: its end is forwarded, and `in` is read anew.
    let w = open_writer(&input);
    write_all(&w, b"one\n", Instant::now() + TIMEOUT);
    drop(w);
    let r = open_reader(&output);
    assert_eq!(read_to_eof(&r, TIMEOUT), b"one\n");
    drop(r);
    // The next session opens `out` for writing again (a reader that came
    // before it would read the last session's end).
    let w = open_writer(&input);
    write_all(&w, b"two\n", Instant::now() + TIMEOUT);
    assert!(wait_until(TIMEOUT, || pipe_pending(&w) == 0), "not read");
    let r = open_reader(&output);
    assert_eq!(read_exact(&r, 4, TIMEOUT), b"two\n");
    drop(w);
    // A reload that changes `out`'s mode sets it through the node.
    d.reload_ok(&config("0600"));
    assert_eq!(mode_of(&output), 0o600);
    detach_strace(strace);
    let traced = fs::read_to_string(&trace).unwrap_or_default();
    let by_name: Vec<&str> = traced
        .lines()
        .filter(|l| l.contains("open") && (l.contains(", \"in\",") || l.contains(", \"out\",")))
        .collect();
    assert!(
        by_name.is_empty(),
        "fifod opened a managed path by name:\n{}",
        by_name.join("\n")
    );
    let through_node = traced
        .lines()
        .filter(|l| l.contains("\"/proc/self/fd/"))
        .count();
    assert!(
        through_node >= 3,
        "fifod reopened nothing through its handles, so the test saw nothing:\n{traced}"
    );
    d.stop_ok();
}

/// Bytes routed to an output while a file holds its path go into the old
/// node, which nobody can open any more; when the FIFO is made again they
/// are taken back out of it and reach the new one, in order.
#[test]
fn bytes_routed_while_an_output_is_displaced_reach_the_fifo_made_again() {
    let mut d = Daemon::start(TWO_ROUTES);
    let out = d.fifo("out");
    let intruder = d.sb.path("intruder");
    write_mode(&intruder, b"for a while\n", 0o644);
    swap_in(&d, &intruder, "out", "a regular file");

    let w = open_writer(&d.fifo("in"));
    write_all(&w, b"while displaced\n", Instant::now() + TIMEOUT);
    assert!(wait_until(TIMEOUT, || pipe_pending(&w) == 0), "not read");
    d.wait_idle(&[&w]);

    fs::remove_file(&out).unwrap();
    let remade = format!("fifo out: made again at {}", out.display());
    wait_log(&d, &remade, TIMEOUT, |log| log_has_line(log, &[&remade]));
    let r = open_reader(&out);
    write_all(&w, b"after\n", Instant::now() + TIMEOUT);
    let got = read_until(&r, b"after\n");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "while displaced\nafter\n",
        "the bytes routed while the path was taken are lost\n--- log ---\n{}",
        d.log()
    );
    d.stop_ok();
}

// ---------------------------------------------------------------------------
// dir and the directories above and below it
// ---------------------------------------------------------------------------

/// `<sandbox>/real` (empty) and `<sandbox>/link -> real`.
fn real_and_link(sb: &Sandbox) -> (PathBuf, PathBuf) {
    let real = sb.path("real");
    mkdir_mode(&real, 0o755);
    let link = sb.path("link");
    symlink(&real, &link).unwrap();
    (real, link)
}

fn config_with_dir(sb: &Sandbox, dir: &Path) {
    sb.write_config(&format!(
        "[daemon]\ndir = \"{}\"\n\n[fifo.in]\n\n[fifo.out]\n\n[[route]]\nfrom = [\"in\"]\nto = [\"out\"]\n",
        dir.display()
    ));
}

/// Only symlinks *above* dir may be followed: dir itself never is, even a
/// link that root owns (as the tests' links are when they run as root).
#[test]
fn dir_that_is_a_symlink_is_refused_even_when_root_owns_it() {
    let sb = Sandbox::new();
    let (real, link) = real_and_link(&sb);
    let link_before = snapshot(&link);
    config_with_dir(&sb, &link);
    run_refused(
        &sb,
        &[&format!(
            "refusing {}: it is a symbolic link",
            link.display()
        )],
    );
    assert_eq!(names_in(&real), names(&[]), "fifod wrote through the link");
    assert_eq!(snapshot(&link), link_before);
}

/// The other side of the rule: a root-owned symlink above dir (such as
/// /var/run) is followed.
#[test]
fn root_owned_symlink_above_dir_is_followed() {
    if !is_root() {
        println!("note: skipped: a root-owned symlink needs root to make");
        return;
    }
    let sb = Sandbox::new();
    let (real, link) = real_and_link(&sb);
    let run = link.join("run");
    config_with_dir(&sb, &run);
    let mut d = Daemon::start_with(sb, &Launch::default());
    let made = real.join("run").join("in");
    assert!(
        lstat(&made).is_some_and(|m| m.file_type().is_fifo()),
        "no FIFO at {}\n{}",
        made.display(),
        d.log()
    );
    relays(&run.join("in"), &run.join("out"), b"via /var/run\n");
    d.stop_ok();
    assert_eq!(names_in(&real), names(&[]), "{}", d.log());
    assert!(lstat(&link).is_some_and(|m| m.file_type().is_symlink()));
}

/// Two FIFOs whose paths meet through a root-owned symbolic link are one
/// node: each would feed the other. Refused at start, and on reload.
#[test]
fn two_fifos_that_are_one_node_are_refused() {
    if !is_root() {
        println!("note: skipped: a root-owned symlink needs root to make");
        return;
    }
    // `dir` is reached through the link (as /var/run is); `out` names the
    // same place without it.
    let sb = Sandbox::new();
    let (real, link) = real_and_link(&sb);
    let (dir, real_dir) = (link.join("run"), real.join("run"));
    mkdir_mode(&real_dir, 0o755);
    let twice = format!(
        "[daemon]\ndir = \"{}\"\n\n[fifo.in]\n[fifo.out]\npath = \"{}\"\n\n\
         [[route]]\nfrom = [\"in\"]\nto = [\"out\"]\n",
        dir.display(),
        real_dir.join("in").display()
    );
    sb.write_config(&twice);
    run_refused(&sb, &["is the same node as fifo in"]);
    assert_eq!(
        names_in(&real_dir),
        names(&[]),
        "fifod left something behind"
    );

    // On reload: the running config is kept, and what the reload made goes.
    let once = format!(
        "[daemon]\ndir = \"{}\"\n\n[fifo.in]\n[fifo.out]\n\n[[route]]\nfrom = [\"in\"]\nto = [\"out\"]\n",
        dir.display()
    );
    sb.write_config(&once);
    let mut d = Daemon::start_with(sb, &Launch::default());
    let again = format!(
        "{once}\n[fifo.fresh]\n[fifo.alias]\npath = \"{}\"\n",
        real_dir.join("out").display()
    );
    d.sb.write_config(&again);
    let outcome = d.reload();
    assert!(
        outcome
            .as_ref()
            .is_err_and(|why| why.contains("is the same node as fifo out")),
        "{outcome:?}\n--- log ---\n{}",
        d.log()
    );
    assert!(
        lstat(&real_dir.join("fresh")).is_none(),
        "the failed reload left fresh"
    );
    relays(&dir.join("in"), &dir.join("out"), b"still one route\n");
    d.stop_ok();
}

#[test]
fn symlink_above_dir_not_owned_by_root_is_refused() {
    let sb = Sandbox::new();
    let (real, link) = real_and_link(&sb);
    if is_root() {
        let (uid, gid) = nobody();
        lchown(&link, Some(uid), Some(gid)).unwrap();
    }
    config_with_dir(&sb, &link.join("run"));
    run_refused(
        &sb,
        &[&format!(
            "refusing {}: it is a symbolic link not owned by root",
            link.display()
        )],
    );
    assert_eq!(names_in(&real), names(&[]), "fifod wrote through the link");
}

/// `dir/sub -> elsewhere` (root's own when the tests run as root), and a
/// FIFO configured at `sub/<rest>`.
fn symlinked_subdirectory(rest: &str) -> (Sandbox, PathBuf, PathBuf) {
    let sb = Sandbox::new();
    let run = sb.run_dir();
    mkdir_mode(&run, 0o755);
    let elsewhere = sb.path("elsewhere");
    mkdir_mode(&elsewhere, 0o755);
    mkdir_mode(&elsewhere.join("deeper"), 0o755);
    let sub = run.join("sub");
    symlink(&elsewhere, &sub).unwrap();
    sb.write_config(&format!(
        "[fifo.a]\n\n[fifo.x]\npath = \"sub/{rest}\"\n\n[[route]]\nfrom = [\"a\"]\nto = [\"x\"]\n"
    ));
    (sb, sub, elsewhere)
}

#[test]
fn symlink_as_a_fifo_directory_inside_dir_is_refused() {
    let (sb, sub, elsewhere) = symlinked_subdirectory("x");
    let before = snapshot(&elsewhere);
    let out = run_refused(
        &sb,
        &[&format!(
            "refusing {}: it is a symbolic link",
            sub.display()
        )],
    );
    assert_eq!(snapshot(&elsewhere), before, "fifod wrote through the link");
    assert_eq!(names_in(&sb.run_dir()), names(&["sub"]), "{}", out.stderr);
}

/// README: directories are resolved without following symbolic links
/// "except root-owned ones above `dir`"; ARCHITECTURE: "a symlink is only
/// ever traversed above dir". `open_dir` follows any root-owned symlink that
/// is not the last component, inside `dir` too.
#[test]
fn root_owned_symlink_deeper_inside_dir_is_refused_too() {
    if !is_root() {
        println!("note: skipped: a root-owned symlink needs root to make");
        return;
    }
    let (sb, sub, elsewhere) = symlinked_subdirectory("deeper/x");
    let mut d = start_or_exit(sb);
    let log = d.log();
    let made = elsewhere.join("deeper").join("x");
    assert!(
        lstat(&made).is_none(),
        "fifod followed {} and made {}\n--- log ---\n{log}",
        sub.display(),
        made.display()
    );
    let status = d.wait_exit(TIMEOUT);
    assert_eq!(status.code(), Some(1), "{log}");
    assert_logged(
        &log,
        &[&format!(
            "refusing {}: it is a symbolic link",
            sub.display()
        )],
    );
}

#[test]
fn world_writable_dir_without_sticky_bit_is_refused() {
    let sb = Sandbox::new();
    let run = sb.run_dir();
    mkdir_mode(&run, 0o777);
    config_with_dir(&sb, &run);
    let out = run_refused(
        &sb,
        &[
            &format!("refusing {}", run.display()),
            "writable by everyone and has no sticky bit",
        ],
    );
    assert_eq!(names_in(&run), names(&[]), "{}", out.stderr);
    assert_eq!(mode_of(&run), 0o777);
}

fn pub_subdirectory(mode: u32) -> (Sandbox, PathBuf) {
    let sb = Sandbox::new();
    let run = sb.run_dir();
    mkdir_mode(&run, 0o755);
    let public = run.join("pub");
    mkdir_mode(&public, mode);
    assert_eq!(mode_of(&public), mode, "premise");
    sb.write_config(
        r#"
[fifo.in]
path = "pub/in"
mode = "0620"

[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
"#,
    );
    (sb, public)
}

/// README: "Other directories that hold FIFOs may be world-writable only
/// with the sticky bit."
#[test]
fn world_writable_sticky_fifo_subdirectory_is_accepted() {
    let (sb, public) = pub_subdirectory(0o1777);
    let mut d = Daemon::start_with(sb, &Launch::default());
    let input = public.join("in");
    assert_fifo(&input, 0o620);
    relays(&input, &d.fifo("out"), b"through a sticky dir\n");
    d.stop_ok();
    assert_eq!(names_in(&public), names(&[]), "{}", d.log());
    assert_eq!(mode_of(&public), 0o1777);
    assert_eq!(names_in(&d.sb.run_dir()), names(&["pub"]), "{}", d.log());
}

#[test]
fn world_writable_fifo_subdirectory_without_sticky_bit_is_refused() {
    let (sb, public) = pub_subdirectory(0o777);
    let out = run_refused(
        &sb,
        &[
            &format!("refusing {}", public.display()),
            "writable by everyone and has no sticky bit",
        ],
    );
    assert_eq!(names_in(&public), names(&[]), "{}", out.stderr);
    assert_eq!(names_in(&sb.run_dir()), names(&["pub"]), "{}", out.stderr);
}

#[test]
fn fifo_subdirectory_of_another_user_is_refused() {
    if !is_root() {
        println!("note: skipped: a directory of another user needs root to make");
        return;
    }
    let (sb, public) = pub_subdirectory(0o755);
    let (uid, gid) = nobody();
    std::os::unix::fs::chown(&public, Some(uid), Some(gid)).unwrap();
    let out = run_refused(
        &sb,
        &[
            &format!("refusing {}", public.display()),
            &format!("owned by uid {uid}"),
        ],
    );
    assert_eq!(names_in(&public), names(&[]), "{}", out.stderr);
    assert_eq!(names_in(&sb.run_dir()), names(&["pub"]), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// Paths in the config
// ---------------------------------------------------------------------------

/// Lines of `stderr` located in `cfg` for `key`.
fn errors_for<'a>(stderr: &'a str, cfg: &Path, key: &str) -> Vec<&'a str> {
    let file = format!("{}:", cfg.display());
    let key = format!(": {key}: ");
    stderr
        .lines()
        .filter(|l| l.starts_with(&file) && l.contains(&key))
        .collect()
}

#[test]
fn dotdot_anywhere_in_a_path_is_a_config_error() {
    let sb = Sandbox::new();
    let root = sb.root().display().to_string();
    let cfg = sb.write_raw_config(&format!(
        r#"[daemon]
dir = "{root}/up/../run"
control = "../control.sock"

[fifo.abs]
path = "{root}/outside/../escape"

[fifo.rel]
path = "sub/../rel"

[fifo.out]

[[route]]
from = ["abs", "rel"]
to = ["out"]
"#
    ));
    for cmd in ["check", "run"] {
        let out = sb.run_cmd(cmd, &Launch::default());
        out.assert_code(if cmd == "check" { 1 } else { 78 });
        for key in [
            "daemon.dir",
            "daemon.control",
            "fifo.abs.path",
            "fifo.rel.path",
        ] {
            let lines = errors_for(&out.stderr, &cfg, key);
            assert!(
                lines.len() == 1 && lines[0].contains("must not contain \"..\""),
                "{cmd}: {key}: expected one error about \"..\":\n{}",
                out.stderr
            );
        }
    }
    assert_eq!(
        names_in(sb.root())
            .into_iter()
            .filter(|n| !n.to_string_lossy().ends_with(".log"))
            .collect::<Vec<_>>(),
        names(&["fifod.toml"]),
        "something was created"
    );
}

/// `len` bytes of path: components of 200 bytes, then one shorter.
fn long_relative_path(len: usize) -> String {
    let mut path = String::new();
    while path.len() + 201 < len {
        path.push_str(&"d".repeat(200));
        path.push('/');
    }
    path.push_str(&"f".repeat(len - path.len()));
    assert_eq!(path.len(), len);
    path
}

#[test]
fn path_over_path_max_or_name_max_is_a_config_error() {
    let sb = Sandbox::new();
    let cfg = sb.write_config(&format!(
        "[fifo.long]\npath = \"{}\"\n\n[fifo.wide]\npath = \"{}\"\n\n[[route]]\nfrom = [\"long\"]\nto = [\"wide\"]\n",
        long_relative_path(4096),
        "w".repeat(256)
    ));
    for cmd in ["check", "run"] {
        let out = sb.run_cmd(cmd, &Launch::default());
        out.assert_code(if cmd == "check" { 1 } else { 78 });
        for (key, says) in [
            ("fifo.long.path", "is 4096 bytes long; at most 4095"),
            (
                "fifo.wide.path",
                "has a component of 256 bytes; at most 255",
            ),
        ] {
            let lines = errors_for(&out.stderr, &cfg, key);
            assert!(
                lines.len() == 1 && lines[0].contains(says),
                "{cmd}: {key}: expected {says:?}:\n{}",
                out.stderr
            );
        }
    }
    assert!(lstat(&sb.run_dir()).is_none(), "run created a dir");
}

/// The limit is checked on the path as written, not on the path fifod makes:
/// a relative path under PATH_MAX joined to `dir` may be over it, and then
/// no program can open the FIFO by its path (ENAMETOOLONG).
#[test]
fn fifo_path_over_path_max_once_joined_to_dir_is_a_config_error() {
    let sb = Sandbox::new();
    let dir_len = sb.run_dir().as_os_str().len();
    // dir, a slash and this: 4096 bytes, one more than the 4095 allowed.
    let rel = long_relative_path(4096 - dir_len - 1);
    let cfg = sb.write_config(&format!("[fifo.a]\npath = \"{rel}\"\n"));
    let out = sb.run_cmd("check", &Launch::default());
    out.assert_code(1);
    assert_eq!(
        errors_for(&out.stderr, &cfg, "fifo.a.path").len(),
        1,
        "{}",
        out.stderr
    );
}

/// A newline in a FIFO path is either refused by the config check, or the
/// FIFO is made with exactly that name and works like any other.
#[test]
fn newline_in_a_fifo_path_is_refused_or_handled_exactly() {
    let sb = Sandbox::new();
    let cfg = sb.write_config(
        r#"
[fifo.in]
path = "in\nforged"

[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
"#,
    );
    let check = sb.run_cmd("check", &Launch::default());
    if check.status.code() == Some(1) {
        assert_eq!(
            errors_for(&check.stderr, &cfg, "fifo.in.path").len(),
            1,
            "{}",
            check.stderr
        );
        sb.run_cmd("run", &Launch::default()).assert_code(78);
        assert!(lstat(&sb.run_dir()).is_none(), "run created a dir");
        return;
    }
    check.assert_code(0);
    let mut d = Daemon::start_with(sb, &Launch::default());
    let run = d.sb.run_dir();
    let input = run.join("in\nforged");
    assert!(
        lstat(&input).is_some_and(|m| m.file_type().is_fifo()),
        "no FIFO named \"in\\nforged\"\n{}",
        d.log()
    );
    assert_eq!(
        names_in(&run),
        names(&["in\nforged", "out", LOCK, "control.sock"]),
        "{}",
        d.log()
    );
    relays(&input, &d.fifo("out"), b"newline\n");
    d.stop_ok();
    assert!(lstat(&run).is_none(), "{}", d.log());
}

/// A path is printed as it is in logs and in `fifod check`: a newline in it
/// starts a line of the path's own making. Under journald (`<N>` prefixes)
/// that line becomes an entry of any priority.
#[test]
fn newline_in_a_fifo_path_cannot_forge_lines() {
    let sb = Sandbox::new();
    sb.write_config(
        r#"
[fifo.in]
path = "in\n<0>forged"

[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
"#,
    );
    let check = sb.run_cmd("check", &Launch::default());
    if check.status.code() == Some(1) {
        return; // Refused: nothing can be forged.
    }
    let forged = |text: &str| text.lines().any(|l| l.starts_with("<0>forged"));
    assert!(!forged(&check.stdout), "check:\n{}", check.stdout);
    let mut d = Daemon::start_with(
        sb,
        &Launch {
            journal: true,
            ..Launch::default()
        },
    );
    d.stop_ok();
    assert!(!forged(&d.log()), "journal:\n{}", d.log());
}

// ---------------------------------------------------------------------------
// The lock file
// ---------------------------------------------------------------------------

/// `dir` exists, with `plant` done at `dir/.fifod.lock`; fifod must exit 1
/// naming the lock file with `says`, and leave `dir` as it was.
fn assert_lock_refused(plant: impl FnOnce(&Sandbox, &Path), says: &str) -> Sandbox {
    let sb = Sandbox::new();
    let run = sb.run_dir();
    mkdir_mode(&run, 0o755);
    let lock = run.join(LOCK);
    plant(&sb, &lock);
    let before = snapshot(&lock);
    config_with_dir(&sb, &run);
    let out = run_refused(&sb, &[&format!("refusing {}: {says}", lock.display())]);
    assert_eq!(snapshot(&lock), before, "the lock path changed");
    assert_eq!(names_in(&run), names(&[LOCK]), "{}", out.stderr);
    sb
}

#[test]
fn lock_file_that_is_a_symlink_is_refused_and_its_target_untouched() {
    let mut scratch = None;
    let _sb = assert_lock_refused(
        |sb, lock| {
            let dir = sb.path("scratch");
            mkdir_mode(&dir, 0o755);
            let mine = dir.join("mine");
            write_mode(&mine, b"precious\n", 0o640);
            symlink(&mine, lock).unwrap();
            let before = snapshot(&mine);
            scratch = Some((Touches::watch(&dir), mine, before));
        },
        "the lock file is a symbolic link",
    );
    let (touches, mine, before) = scratch.unwrap();
    assert_eq!(touches.on("mine"), vec![], "fifod followed the symlink");
    assert_eq!(snapshot(&mine), before, "the target changed");
}

#[test]
fn lock_file_that_is_a_dangling_symlink_is_refused_and_its_target_not_created() {
    let sb = assert_lock_refused(
        |sb, lock| symlink(sb.path("absent"), lock).unwrap(),
        "the lock file is a symbolic link",
    );
    assert!(
        lstat(&sb.path("absent")).is_none(),
        "the target was created"
    );
}

#[test]
fn lock_file_with_a_second_hard_link_is_refused_and_not_written() {
    let sb = assert_lock_refused(
        |sb, lock| {
            let mine = sb.path("mine");
            write_mode(&mine, b"precious\n", 0o640);
            fs::hard_link(&mine, lock).unwrap();
        },
        "the lock file has 2 hard links",
    );
    assert_eq!(fs::read(sb.path("mine")).unwrap(), b"precious\n");
}

/// SAFETY: inspect a node before opening it, so that a device is never
/// opened. The lock file is opened (`O_RDWR|O_CREAT`) before it is
/// inspected.
#[test]
fn device_at_the_lock_path_is_refused_without_being_opened() {
    if !is_root() {
        println!("note: skipped: mknod needs root");
        return;
    }
    let sb = Sandbox::new();
    let run = sb.run_dir();
    mkdir_mode(&run, 0o755);
    mknod(
        &run.join(LOCK),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o600),
        makedev(1, 3),
    )
    .expect("mknod");
    let touches = Touches::watch(&run);
    config_with_dir(&sb, &run);
    let out = sb.run_expect_exit(&Launch::default());
    out.assert_code(1);
    assert!(out.stderr.contains("character device"), "{}", out.stderr);
    assert_eq!(touches.on(LOCK), vec![], "fifod opened the device");
}

// ---------------------------------------------------------------------------
// FIFOs already there at start
// ---------------------------------------------------------------------------

/// After a crash (SIGKILL), the next fifod on the same dir adopts the FIFOs
/// left behind, the very nodes: a writer still connected to the old `in`
/// reaches the new daemon.
#[test]
fn fifos_left_by_a_crash_are_adopted_and_connected_writers_keep_their_node() {
    let shared = Sandbox::new();
    let run = shared.run_dir();
    let toml = format!(
        "[daemon]\ndir = \"{}\"\n\n[fifo.in]\nmode = \"0620\"\n\n[fifo.out]\n\n[[route]]\nfrom = [\"in\"]\nto = [\"out\"]\n",
        run.display()
    );
    let (input, output) = (run.join("in"), run.join("out"));
    let mut d1 = Daemon::start(&toml);
    let inodes = [snapshot(&input).ino, snapshot(&output).ino];
    let w = open_writer(&input);
    d1.stop(Signal::SIGKILL);
    assert!(lstat(&input).is_some() && lstat(&output).is_some());

    let mut d2 = Daemon::start(&toml);
    let log = d2.log();
    for (name, path) in [("in", &input), ("out", &output)] {
        assert_logged(
            &log,
            &[&format!("adopted fifo {name} at {}", path.display())],
        );
    }
    assert!(!log.contains("created fifo"), "{log}");
    assert_eq!([snapshot(&input).ino, snapshot(&output).ino], inodes);
    assert_eq!(snapshot(&input).mode & 0o7777, 0o620);
    assert_eq!(
        fs::read_to_string(run.join(LOCK)).unwrap().trim(),
        d2.pid().to_string()
    );

    let r = open_reader(&output);
    write_all(&w, b"after the crash\n", Instant::now() + TIMEOUT);
    assert_eq!(read_exact(&r, 16, TIMEOUT), b"after the crash\n");
    drop((w, r));
    d2.stop_ok();
    // The dir was there when the second one started: kept, and emptied.
    assert_eq!(names_in(&run), names(&[]), "{}", d2.log());
}

#[test]
fn stale_fifo_with_a_second_hard_link_is_refused_and_left_alone() {
    let sb = Sandbox::new();
    let run = sb.run_dir();
    mkdir_mode(&run, 0o755);
    let a = run.join("a");
    mkfifo_mode(&a, 0o640);
    let elsewhere = sb.path("elsewhere");
    mkdir_mode(&elsewhere, 0o755);
    let other = elsewhere.join("other-name");
    fs::hard_link(&a, &other).unwrap();
    // `first` is made before `a` is reached; another mode than 0640.
    sb.write_config(
        r#"
[fifo.first]

[fifo.a]
mode = "0666"

[[route]]
from = ["first"]
to = ["a"]
"#,
    );
    let before = snapshot(&a);
    assert_eq!(before.nlink, 2, "premise");
    let out = run_refused(
        &sb,
        &[&format!("refusing {}: it has 2 hard links", a.display())],
    );
    assert_eq!(snapshot(&a), before, "it changed");
    assert_eq!(snapshot(&other).ino, before.ino);
    assert_eq!(names_in(&run), names(&["a"]), "{}", out.stderr);
}

/// A FIFO of another user at a FIFO path is refused, unless that user is the
/// FIFO's configured owner: then it is adopted.
#[test]
fn stale_fifo_of_another_user_is_refused_unless_it_is_the_configured_owner() {
    if !is_root() {
        println!("note: skipped: a FIFO of another user needs root to make");
        return;
    }
    let (uid, gid) = nobody();
    let sb = Sandbox::new();
    let run = sb.run_dir();
    mkdir_mode(&run, 0o755);
    let a = run.join("a");
    mkfifo_mode(&a, 0o640);
    std::os::unix::fs::chown(&a, Some(uid), Some(gid)).unwrap();
    let config = |owner: &str| {
        format!(
            "[fifo.first]\n\n[fifo.a]\nmode = \"0620\"\n{owner}\n[[route]]\nfrom = [\"first\"]\nto = [\"a\"]\n"
        )
    };
    sb.write_config(&config(""));
    let before = snapshot(&a);
    let out = run_refused(
        &sb,
        &[&format!(
            "refusing {}: it is a FIFO owned by uid {uid}",
            a.display()
        )],
    );
    assert_eq!(snapshot(&a), before, "it changed");
    assert_eq!(names_in(&run), names(&["a"]), "{}", out.stderr);

    sb.write_config(&config(&format!("owner = {uid}\n")));
    let mut d = Daemon::start_with(sb, &Launch::default());
    assert_logged(&d.log(), &[&format!("adopted fifo a at {}", a.display())]);
    let now = snapshot(&a);
    assert_eq!(
        (now.ino, now.uid, now.mode & 0o7777),
        (before.ino, uid, 0o620)
    );
    d.stop_ok();
    assert!(lstat(&a).is_none(), "adopted FIFO left\n{}", d.log());
}
