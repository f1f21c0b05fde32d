//! Hardening: a restart back-off that never spins, a lock file and a `dir`
//! that others could have planted or can write, and a control socket that
//! must stay inside `dir`.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use crate::common::{
    Daemon, Guarded, LOCK, Launch, Sandbox, TIMEOUT, exits, is_root, lstat, mode_of, names,
    names_in, started_pids, wait_until,
};

// ---------------------------------------------------------------------------
// Restart back-off
// ---------------------------------------------------------------------------

#[test]
fn zero_restart_delay_still_backs_off_from_a_1ms_floor() {
    let mut g = Guarded(Daemon::start(
        r#"
[process.f]
command = ["false"]
restart = "always"
restart_delay = "0ms"
"#,
    ));
    let d = &mut g.0;
    // Watch for 2 s: the restarts must stay few (a 1 ms floor doubling
    // gives about 12; no floor gives thousands).
    let mut starts = 0;
    let spun = wait_until(Duration::from_secs(2), || {
        starts = started_pids(&d.log(), "f").len();
        starts >= 50
    });
    assert!(
        !spun,
        "{starts} starts within 2 s with restart_delay 0ms: no back-off\n--- log ---\n{}",
        d.log()
    );
    // And the announced back-off, after a first immediate restart (the
    // configured 0ms) if there is one, starts at the 1 ms floor and
    // doubles.
    let mut log = String::new();
    assert!(
        wait_until(TIMEOUT, || {
            log = d.log();
            exits(&log, "f").len() >= 4
        }),
        "fewer than 4 exits of `false`\n--- log ---\n{log}"
    );
    let announced: Vec<String> = exits(&log, "f").into_iter().take(4).map(|e| e.1).collect();
    let skip = usize::from(announced[0] == "exited with status 1; restarting in 0s");
    assert_eq!(
        announced[skip..skip + 3],
        ["1ms", "2ms", "4ms"]
            .iter()
            .map(|ms| format!("exited with status 1; restarting in {ms}"))
            .collect::<Vec<_>>(),
        "{log}"
    );
    d.stop_ok();
}

// ---------------------------------------------------------------------------
// The lock file and dir
// ---------------------------------------------------------------------------

#[test]
fn lock_file_of_another_user_is_refused_and_left_alone() {
    if !is_root() {
        println!("skipped: chowning the lock file to another user needs root");
        return;
    }
    let sb = Sandbox::new();
    sb.write_config("[fifo.a]\n");
    let dir = sb.run_dir();
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let lock = dir.join(".fifod.lock");
    fs::write(&lock, "4242\n").unwrap();
    fs::set_permissions(&lock, fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&lock, Some(65534), Some(65534)).unwrap();
    let before = fs::symlink_metadata(&lock).unwrap();

    let out = sb.run_expect_exit(&Launch::default());
    out.assert_code(1);
    assert!(
        out.stderr.contains("lock") && out.stderr.contains("owned by uid 65534"),
        "stderr must name the lock file's owner:\n{}",
        out.stderr
    );
    let after = fs::symlink_metadata(&lock).expect("the lock file was removed");
    assert_eq!(
        (
            after.dev(),
            after.ino(),
            after.uid(),
            after.gid(),
            after.mode()
        ),
        (before.dev(), before.ino(), 65534, 65534, before.mode()),
        "the lock file was replaced or changed"
    );
    assert_eq!(fs::read_to_string(&lock).unwrap(), "4242\n");
    assert_eq!(
        names_in(&dir),
        names(&[LOCK]),
        "fifod left something in dir"
    );
}

#[test]
fn world_writable_dir_is_refused_even_with_the_sticky_bit() {
    let sb = Sandbox::new();
    sb.write_config("[fifo.a]\n");
    let dir = sb.run_dir();
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
    assert_eq!(mode_of(&dir), 0o1777, "test premise: dir mode");

    let out = sb.run_expect_exit(&Launch::default());
    out.assert_code(1);
    assert!(
        out.stderr.contains("refusing") && out.stderr.contains("writable by everyone"),
        "stderr must refuse the world-writable dir:\n{}",
        out.stderr
    );
    assert_eq!(
        names_in(&dir),
        names(&[]),
        "fifod created something in the refused dir\n{}",
        out.stderr
    );
    assert_eq!(
        mode_of(&dir),
        0o1777,
        "fifod changed the refused dir's mode"
    );
}

// ---------------------------------------------------------------------------
// Who may change the config
// ---------------------------------------------------------------------------

/// Runs `run` and `check` on the sandbox's config and expects both to refuse
/// it for `why`, with nothing made.
fn refused_config(sb: &Sandbox, why: &str) {
    let out = sb.run_expect_exit(&Launch::default());
    out.assert_code(78);
    let config = sb.config_path().display().to_string();
    assert!(
        out.stderr.contains(&format!("{config}: refused: ")) && out.stderr.contains(why),
        "`run` must name the file and say {why:?}:\n{}",
        out.stderr
    );
    assert!(!sb.run_dir().exists(), "a refused config made its dir");
    let check = sb.run_cmd("check", &Launch::default());
    check.assert_code(1);
    assert!(check.stderr.contains(why), "{}", check.stderr);
}

#[test]
fn a_config_that_others_could_change_is_refused_at_start_and_on_reload() {
    let sb = Sandbox::new();
    let config = sb.write_config("[fifo.a]\n");
    fs::set_permissions(&config, fs::Permissions::from_mode(0o666)).unwrap();
    refused_config(&sb, "is writable by its group or by others (mode 0666)");

    fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap();
    let mut d = Daemon::start_with(sb, &Launch::default());
    // A reload to a file its group may write is refused; the config before
    // stays in force.
    let config = d.sb.write_config("[fifo.a]\n[fifo.b]\n");
    fs::set_permissions(&config, fs::Permissions::from_mode(0o664)).unwrap();
    let why = d.reload().expect_err("a group-writable config was applied");
    assert!(why.contains("others could change it"), "{why}");
    assert!(
        d.log()
            .contains("is writable by its group or by others (mode 0664)"),
        "{}",
        d.log()
    );
    assert!(!d.fifo("b").exists(), "the refused config was applied");
    fs::set_permissions(&config, fs::Permissions::from_mode(0o640)).unwrap();
    d.reload()
        .expect("a config only its owner may write is applied");
    assert!(d.fifo("b").exists());
    d.stop_ok();
}

#[test]
fn as_root_a_config_another_user_owns_or_could_replace_is_refused() {
    if !is_root() {
        println!("note: skipped: a config of another user needs root to make");
        return;
    }
    // Owned by nobody, though nobody else may write it.
    let sb = Sandbox::new();
    let config = sb.write_config("[fifo.a]\n");
    fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&config, Some(65534), None).unwrap();
    refused_config(&sb, "belongs to uid 65534, not root");

    // Reached through a symbolic link: the file it leads to counts.
    let sb = Sandbox::new();
    let real = sb.path("real.toml");
    fs::write(&real, "[fifo.a]\n").unwrap();
    std::os::unix::fs::chown(&real, Some(65534), None).unwrap();
    std::os::unix::fs::symlink(&real, sb.config_path()).unwrap();
    refused_config(&sb, "(through a symbolic link, ");

    // In a directory that others may write: they could put another file in
    // its place.
    let sb = Sandbox::new();
    sb.write_config("[fifo.a]\n");
    fs::set_permissions(sb.root(), fs::Permissions::from_mode(0o777)).unwrap();
    refused_config(
        &sb,
        "is writable by its group or by others (mode 0777) without the sticky bit",
    );
    // With the sticky bit (as /tmp has), nobody else may rename or remove it.
    fs::set_permissions(sb.root(), fs::Permissions::from_mode(0o1777)).unwrap();
    let mut d = Daemon::start_with(sb, &Launch::default());
    d.stop_ok();
}

// ---------------------------------------------------------------------------
// The control socket
// ---------------------------------------------------------------------------

#[test]
fn control_socket_outside_dir_is_a_config_error() {
    let sb = Sandbox::new();
    let cfg = sb.write_raw_config(
        "[daemon]\ndir = \"{RUN}\"\ncontrol = \"/tmp/elsewhere.sock\"\n\n[fifo.a]\n",
    );
    let out = sb.run_cmd("check", &Launch::default());
    out.assert_code(1);
    let file = cfg.display().to_string();
    let located: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with(&format!("{file}:")))
        .collect();
    assert_eq!(
        located.len(),
        1,
        "expected one located error:\n{}",
        out.stderr
    );
    let prefix = format!("{file}:3:11: daemon.control: ");
    assert!(
        located[0].starts_with(&prefix) && located[0][prefix.len()..].contains("inside dir"),
        "expected `{prefix}...inside dir...`, got:\n{}",
        out.stderr
    );
    assert!(
        lstat(&sb.run_dir()).is_none(),
        "check touched the filesystem"
    );
}
