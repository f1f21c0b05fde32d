//! Creating, adopting, refusing and removing FIFOs; the dir; the lock.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use nix::unistd::Group;

use crate::common::{
    Daemon, IN_OUT, KIB, LOCK, Launch, Sandbox, Snapshot, TIMEOUT, assert_fifo, assert_logged,
    gone_or_zombie, is_root, lstat, mkfifo_mode, mode_of, names, names_in, nobody, nobody_user,
    open_reader, open_writer, read_exact, read_until, snapshot, under_prlimit, wait_until,
    write_all,
};

fn lock_pid(dir: &Path) -> u32 {
    let text = fs::read_to_string(dir.join(LOCK)).expect("read lock file");
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("lock file holds {text:?}, not a pid"))
}

/// A line of `log` with `<event> fifo <name>` (name not followed by more of a
/// name, so `in` does not match `in2`).
fn has_event(log: &str, event: &str, name: &str) -> bool {
    let needle = format!("{event} fifo {name}");
    log.lines().any(|l| {
        l.match_indices(&needle).any(|(i, _)| {
            l[i + needle.len()..]
                .chars()
                .next()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '-' || c == '.'))
        })
    })
}

#[test]
fn creates_with_exact_modes_under_umask_777() {
    let sb = Sandbox::new();
    sb.write_config(
        r#"
[daemon]
dir_mode = "0710"

[fifo.in]
mode = "0620"

[fifo.in2]
mode = "644"

[fifo.out]

[fifo.out2]
mode = "0466"

[[route]]
from = ["in", "in2"]
to = ["out", "out2"]
"#,
    );
    let launch = Launch {
        umask: Some(0o777),
        ..Launch::default()
    };
    let mut d = Daemon::start_with(sb, &launch);
    let run = d.sb.run_dir();
    let md = lstat(&run).expect("dir exists");
    assert!(md.is_dir());
    assert_eq!(
        md.mode() & 0o7777,
        0o710,
        "dir mode {:o}",
        md.mode() & 0o7777
    );
    assert_fifo(&d.fifo("in"), 0o620);
    assert_fifo(&d.fifo("in2"), 0o644);
    assert_fifo(&d.fifo("out"), 0o600);
    assert_fifo(&d.fifo("out2"), 0o466);
    assert_eq!(lock_pid(&run), d.pid());
    let log = d.log();
    for name in ["in", "in2", "out", "out2"] {
        assert!(
            has_event(&log, "created", name),
            "no `created fifo {name}`:\n{log}"
        );
    }
    d.stop_ok();
}

#[test]
fn owner_and_group() {
    let sb = Sandbox::new();
    if !is_root() {
        sb.write_config(
            r#"
[fifo.in]
owner = "root"

[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
"#,
        );
        let out = sb.run_expect_exit(&Launch::default());
        out.assert_code(1);
        assert!(
            out.stderr.contains("root")
                || out.stderr.contains(&sb.fifo("in").display().to_string()),
            "unclear error: {}",
            out.stderr
        );
        assert!(!sb.run_dir().exists(), "left {}", sb.run_dir().display());
        return;
    }
    let nobody = nobody_user();
    let (group_name, gid) = match Group::from_name("nogroup").unwrap() {
        Some(g) => ("nogroup".to_string(), g.gid.as_raw()),
        None => (nobody.gid.as_raw().to_string(), nobody.gid.as_raw()),
    };
    let uid = nobody.uid.as_raw();
    assert_ne!(uid, 0);
    sb.write_config(&format!(
        r#"
[fifo.in]
owner = "nobody"
group = "{group_name}"
mode = "0640"

[fifo.out]
owner = "{uid}"
group = "{gid}"

[[route]]
from = ["in"]
to = ["out"]
"#
    ));
    let mut d = Daemon::start_with(sb, &Launch::default());
    for (name, mode) in [("in", 0o640), ("out", 0o600)] {
        let md = lstat(&d.fifo(name)).unwrap();
        assert_eq!((md.uid(), md.gid()), (uid, gid), "owner of {name}");
        assert_fifo(&d.fifo(name), mode);
    }
    d.stop_ok();
}

#[test]
fn owner_other_user_refused_when_unprivileged() {
    let sb = Sandbox::new();
    let mut launch = Launch::default();
    let base = if is_root() {
        // Run the daemon as nobody, from a copy of the binary it can execute,
        // in a place it can write.
        fs::set_permissions(sb.root(), fs::Permissions::from_mode(0o755)).unwrap();
        let bin = sb.path("fifod-copy");
        fs::copy(crate::common::BIN, &bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        let base = sb.path("nb");
        fs::create_dir(&base).unwrap();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o777)).unwrap();
        launch.user = Some(nobody());
        launch.bin = Some(bin);
        base
    } else {
        sb.root().to_path_buf()
    };
    let run = base.join("run");
    let cfg = sb.write_config(&format!(
        r#"
[daemon]
dir = "{}"

[fifo.in]
owner = "root"

[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
"#,
        run.display()
    ));
    fs::set_permissions(&cfg, fs::Permissions::from_mode(0o644)).unwrap();
    let out = sb.run_expect_exit(&launch);
    out.assert_code(1);
    assert!(
        out.stderr.contains("root") || out.stderr.contains(&run.join("in").display().to_string()),
        "unclear error: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(!run.exists(), "left {}", run.display());
}

#[test]
fn adopts_existing_fifo_and_corrects_mode() {
    let sb = Sandbox::new();
    fs::create_dir(sb.run_dir()).unwrap();
    mkfifo_mode(&sb.fifo("in"), 0o666);
    let ino = lstat(&sb.fifo("in")).unwrap().ino();
    sb.write_config(
        r#"
[fifo.in]
mode = "0620"

[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
"#,
    );
    let mut d = Daemon::start_with(sb, &Launch::default());
    assert_fifo(&d.fifo("in"), 0o620);
    assert_eq!(
        lstat(&d.fifo("in")).unwrap().ino(),
        ino,
        "adopted FIFO replaced"
    );
    let log = d.log();
    assert!(has_event(&log, "adopted", "in"), "{log}");
    assert!(has_event(&log, "created", "out"), "{log}");
    assert!(!has_event(&log, "created", "in"), "{log}");

    // It relays through the adopted FIFO.
    let w = open_writer(&d.fifo("in"));
    let r = open_reader(&d.fifo("out"));
    write_all(&w, b"adopted", std::time::Instant::now() + TIMEOUT);
    assert_eq!(read_exact(&r, 7, TIMEOUT), b"adopted");

    d.stop_ok();
    assert!(lstat(&d.fifo("in")).is_none(), "adopted FIFO not removed");
    assert!(lstat(&d.fifo("out")).is_none());
    // The dir pre-existed: kept, and left empty.
    let left: Vec<_> = fs::read_dir(d.sb.run_dir()).unwrap().collect();
    assert!(left.is_empty(), "left in dir: {left:?}");
}

// ---------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Thing {
    RegularFile,
    Directory,
    UnixSocket,
    SymlinkToPasswd,
    DanglingSymlink,
    SymlinkToFifo,
    CharDevice,
}

/// Creates `thing` at `path`; returns other paths whose state must not change
/// (symlink targets), or None if this kind cannot be made here.
fn make_thing(
    thing: Thing,
    path: &Path,
    scratch: &Path,
) -> Option<(Vec<PathBuf>, Option<UnixListener>)> {
    let mut keep = Vec::new();
    let mut listener = None;
    match thing {
        Thing::RegularFile => fs::write(path, b"precious data\n").unwrap(),
        Thing::Directory => {
            fs::create_dir(path).unwrap();
            fs::write(path.join("inside"), b"inside\n").unwrap();
        }
        Thing::UnixSocket => listener = Some(UnixListener::bind(path).unwrap()),
        Thing::SymlinkToPasswd => {
            std::os::unix::fs::symlink("/etc/passwd", path).unwrap();
            keep.push(PathBuf::from("/etc/passwd"));
        }
        Thing::DanglingSymlink => {
            let target = scratch.join("does-not-exist");
            std::os::unix::fs::symlink(&target, path).unwrap();
            keep.push(scratch.to_path_buf());
        }
        Thing::SymlinkToFifo => {
            let target = scratch.join("target.fifo");
            mkfifo_mode(&target, 0o640);
            std::os::unix::fs::symlink(&target, path).unwrap();
            keep.push(target);
        }
        Thing::CharDevice => {
            if let Err(e) = mknod(
                path,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o600),
                makedev(1, 3),
            ) {
                eprintln!("note: skipping the char-device case: mknod failed: {e}");
                return None;
            }
        }
    }
    Some((keep, listener))
}

/// `thing` sits at FIFO `b`'s path, outside a dir fifod has to create:
/// fifod must exit 1 naming the path with `refusing`, leave the thing (and
/// any symlink target) untouched, and leave nothing of its own.
fn assert_refuses(thing: Thing) {
    let sb = Sandbox::new();
    let outside = sb.path("outside");
    let scratch = sb.path("scratch");
    fs::create_dir(&outside).unwrap();
    fs::create_dir(&scratch).unwrap();
    let victim = outside.join("b");
    let Some((keep, _listener)) = make_thing(thing, &victim, &scratch) else {
        return;
    };
    let before = snapshot(&victim);
    let kept_before: Vec<Snapshot> = keep.iter().map(|p| snapshot(p)).collect();
    let outside_before = snapshot(&outside);

    sb.write_config(&format!(
        r#"
[fifo.a]
[fifo.b]
path = "{}"
[fifo.c]

[[route]]
from = ["a"]
to = ["b", "c"]
"#,
        victim.display()
    ));
    let out = sb.run_expect_exit(&Launch::default());
    out.assert_code(1);
    assert!(
        out.stderr.contains(&victim.display().to_string()),
        "{thing:?}: stderr does not name {}:\n{}",
        victim.display(),
        out.stderr
    );
    assert!(
        out.stderr.contains("refusing"),
        "{thing:?}: no `refusing`:\n{}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);

    assert_eq!(snapshot(&victim), before, "{thing:?} was modified");
    for (p, snap) in keep.iter().zip(&kept_before) {
        assert_eq!(
            &snapshot(p),
            snap,
            "{thing:?}: {} was modified",
            p.display()
        );
    }
    assert_eq!(
        snapshot(&outside),
        outside_before,
        "{thing:?}: its dir changed"
    );
    assert!(
        !sb.run_dir().exists(),
        "{thing:?}: the dir fifod created was left: {:?}",
        fs::read_dir(sb.run_dir()).map(|r| r.map(|e| e.unwrap().file_name()).collect::<Vec<_>>())
    );
}

#[test]
fn refuses_regular_file() {
    assert_refuses(Thing::RegularFile);
}

#[test]
fn refuses_directory() {
    assert_refuses(Thing::Directory);
}

#[test]
fn refuses_unix_socket() {
    assert_refuses(Thing::UnixSocket);
}

#[test]
fn refuses_symlink_to_etc_passwd() {
    assert_refuses(Thing::SymlinkToPasswd);
}

#[test]
fn refuses_dangling_symlink() {
    assert_refuses(Thing::DanglingSymlink);
}

#[test]
fn refuses_symlink_to_fifo() {
    assert_refuses(Thing::SymlinkToFifo);
}

#[test]
fn refuses_char_device() {
    if !is_root() {
        eprintln!("note: skipping the char-device case: not root");
        return;
    }
    assert_refuses(Thing::CharDevice);
}

/// The refused thing inside a dir that already exists: the dir stays, with
/// only the thing in it.
#[test]
fn refuses_regular_file_in_existing_dir() {
    let sb = Sandbox::new();
    let run = sb.run_dir();
    fs::create_dir(&run).unwrap();
    fs::write(run.join("b"), b"keep me\n").unwrap();
    let before = snapshot(&run.join("b"));
    sb.write_config(
        r#"
[fifo.a]
[fifo.b]
[fifo.c]

[[route]]
from = ["a"]
to = ["b", "c"]
"#,
    );
    let out = sb.run_expect_exit(&Launch::default());
    out.assert_code(1);
    assert!(
        out.stderr.contains(&run.join("b").display().to_string()),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("refusing"), "{}", out.stderr);
    assert_eq!(snapshot(&run.join("b")), before);
    assert_eq!(names_in(&run), names(&["b"]), "fifod left files behind");
}

// ---------------------------------------------------------------------------
// Lock, stop, removal
// ---------------------------------------------------------------------------

#[test]
fn second_instance_is_refused_by_the_lock() {
    let mut d = Daemon::start(IN_OUT);
    let run = d.sb.run_dir();
    assert_eq!(lock_pid(&run), d.pid());
    let inodes: Vec<u64> = ["in", "out", LOCK]
        .iter()
        .map(|n| lstat(&run.join(n)).unwrap().ino())
        .collect();

    let out = d.sb.run_expect_exit(&Launch::default());
    out.assert_code(1);
    assert!(out.stderr.contains("already running"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("pid {}", d.pid())),
        "stderr does not name pid {}: {}",
        d.pid(),
        out.stderr
    );

    // The loser touched nothing of the first instance's.
    let after: Vec<u64> = ["in", "out", LOCK]
        .iter()
        .map(|n| lstat(&run.join(n)).expect("still there").ino())
        .collect();
    assert_eq!(after, inodes);
    assert_eq!(lock_pid(&run), d.pid());
    let w = open_writer(&d.fifo("in"));
    let r = open_reader(&d.fifo("out"));
    write_all(&w, b"still here", std::time::Instant::now() + TIMEOUT);
    assert_eq!(read_exact(&r, 10, TIMEOUT), b"still here");

    d.stop_ok();
    assert!(lstat(&run.join(LOCK)).is_none());
}

fn removes_everything_on(sig: Signal) {
    let mut d = Daemon::start(IN_OUT);
    let run = d.sb.run_dir();
    assert!(lstat(&run.join(LOCK)).is_some());
    let st = d.stop(sig);
    assert_eq!(st.code(), Some(0), "{sig:?}: {st:?}\n{}", d.log());
    let log = d.log();
    for name in ["in", "out"] {
        assert!(lstat(&d.fifo(name)).is_none(), "{name} not removed");
        assert!(has_event(&log, "removed", name), "{log}");
    }
    assert!(lstat(&run.join(LOCK)).is_none(), "lock not removed");
    assert!(lstat(&run).is_none(), "created dir not removed");
}

#[test]
fn removes_everything_on_sigterm() {
    removes_everything_on(Signal::SIGTERM);
}

#[test]
fn removes_everything_on_sigint() {
    removes_everything_on(Signal::SIGINT);
}

#[test]
fn preexisting_dir_is_kept() {
    let sb = Sandbox::new();
    fs::create_dir(sb.run_dir()).unwrap();
    fs::set_permissions(sb.run_dir(), fs::Permissions::from_mode(0o751)).unwrap();
    let ino = lstat(&sb.run_dir()).unwrap().ino();
    sb.write_config(IN_OUT);
    let mut d = Daemon::start_with(sb, &Launch::default());
    assert_fifo(&d.fifo("in"), 0o600);
    d.stop_ok();
    let run = d.sb.run_dir();
    let md = lstat(&run).expect("pre-existing dir removed");
    assert_eq!(md.ino(), ino);
    assert_eq!(mode_of(&run), 0o751);
    let left: Vec<_> = fs::read_dir(&run).unwrap().collect();
    assert!(left.is_empty(), "left in dir: {left:?}");
}

#[test]
fn replaced_fifo_is_not_removed() {
    let mut d = Daemon::start(IN_OUT);
    let out = d.fifo("out");
    let tmp = d.sb.path("replacement");
    let content = vec![b'x'; 3 * KIB];
    fs::write(&tmp, &content).unwrap();
    fs::rename(&tmp, &out).unwrap();
    let ino = lstat(&out).unwrap().ino();

    d.stop_ok();
    let log = d.log();
    let md = lstat(&out).expect("foreign file removed");
    assert!(md.is_file());
    assert_eq!(md.ino(), ino);
    assert_eq!(fs::read(&out).unwrap(), content);
    assert_logged(&log, &["not removing", &out.display().to_string()]);
    assert!(lstat(&d.fifo("in")).is_none(), "in not removed");
    assert!(has_event(&log, "removed", "in"), "{log}");
    assert!(!has_event(&log, "removed", "out"), "{log}");
    let run = d.sb.run_dir();
    assert!(lstat(&run.join(LOCK)).is_none(), "lock not removed");
    assert_eq!(names_in(&run), names(&["out"]));
}

#[test]
fn too_low_a_file_limit_is_a_clear_error_at_start() {
    let sb = Sandbox::new();
    sb.write_config(IN_OUT);
    let limited = under_prlimit(&sb, "40:40");
    let out = sb.run_expect_exit(&Launch {
        bin: Some(limited),
        ..Launch::default()
    });
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("file descriptors, but RLIMIT_NOFILE allows 40"),
        "{}",
        out.stderr
    );
    assert!(!sb.run_dir().exists(), "nothing is created");
}

/// A process that sets `user` runs as that user with its own groups (as
/// `initgroups` gives them: none of root's), that user's account in its
/// environment (not root's), and `no_new_privs`, so that no setuid program
/// can give root back.
#[test]
fn process_runs_as_its_user_and_group() {
    if !is_root() {
        println!("note: skipped: starting a process as another user needs root");
        return;
    }
    let (uid, gid) = nobody();
    let user = nobody_user();
    let groups = std::process::Command::new("id")
        .args(["-G", "nobody"])
        .output()
        .unwrap();
    let groups = String::from_utf8_lossy(&groups.stdout).trim().to_string();
    let mut d = Daemon::start(
        r#"
[fifo.out]

[process.who]
command = ["sh", "-c", "echo uid=$(id -u) gid=$(id -g) groups=$(id -G) home=$HOME user=$USER logname=$LOGNAME shell=$SHELL $(grep NoNewPrivs /proc/self/status | tr -d '\t') end; exec sleep 60"]
user = "nobody"
restart = "never"

[[route]]
from = ["who"]
to = ["out"]
"#,
    );
    let r = open_reader(&d.fifo("out"));
    let got = read_until(&r, b"end\n");
    assert_eq!(
        String::from_utf8_lossy(&got),
        format!(
            "uid={uid} gid={gid} groups={groups} home={} user=nobody logname=nobody shell={} \
             NoNewPrivs:1 end\n",
            user.dir.display(),
            user.shell.display()
        )
    );
    d.stop_ok();
}

/// A descendant that leaves its process group and session (`setsid`) and
/// outlives its parent is still found and stopped with fifod.
#[test]
fn a_descendant_that_leaves_its_group_is_stopped_with_fifod() {
    let mut d = Daemon::start(
        r#"
[daemon]
shutdown_timeout = "1s"

[fifo.out]

[process.parent]
# It waits until the sleep has left its process group (field 5 of stat).
command = ["sh", "-c", "setsid sleep 600 & while [ \"$(cut -d' ' -f5 /proc/$!/stat)\" = $$ ]; do :; done; echo pid=$! end; exit 0"]
restart = "never"

[[route]]
from = ["parent"]
to = ["out"]
"#,
    );
    let r = open_reader(&d.fifo("out"));
    let got = String::from_utf8_lossy(&read_until(&r, b" end\n")).to_string();
    let pid: i32 = got
        .trim_start_matches("pid=")
        .trim_end_matches(" end\n")
        .parse()
        .unwrap_or_else(|_| panic!("no pid in {got:?}"));
    assert!(!gone_or_zombie(pid), "the descendant did not start");
    d.stop_ok();
    assert!(
        wait_until(TIMEOUT, || gone_or_zombie(pid)),
        "process {pid}, left by a process, outlived fifod\n--- log ---\n{}",
        d.log()
    );
}
