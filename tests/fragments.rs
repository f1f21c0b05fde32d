//! Config fragments: every `*.toml` in the directory beside the main file
//! (`fifod.toml` → `fifod.d/`) adds FIFOs, processes and routes; errors are
//! located in the file that has them; a reload applies fragments added,
//! changed and removed as one difference.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::common::{Daemon, Launch, Sandbox, relays};

const MAIN: &str = r#"
[fifo.in]
mode = "0620"
"#;

/// The package's fragment: a FIFO and a route from the main file's `in`.
const APP: &str = r#"[fifo.app-out]

[[route]]
name = "app"
from = ["in"]
to = ["app-out"]
"#;

#[test]
fn fragments_add_to_the_main_file_and_check_lists_what_it_read() {
    let sb = Sandbox::new();
    sb.write_config(MAIN);
    let app = sb.write_fragment("50-app.toml", APP);
    let log = sb.write_fragment(
        "60-log.toml",
        "[fifo.log]\n\n[[route]]\nfrom = [\"in\"]\nto = [\"log\"]\n",
    );
    // Left alone, and said so.
    let ignored = [
        ("50-app.toml~", "not a .toml file"),
        (".50-app.toml.swp", "a hidden file"),
        ("README", "not a .toml file"),
    ];
    for (name, _) in ignored {
        sb.write_fragment(name, "this is not TOML [");
    }
    fs::create_dir(sb.path("fifod.d/dir.toml")).unwrap();

    let check = sb.run_cmd("check", &Launch::default());
    check.assert_code(0);
    let config = sb.config_path();
    let mut expected = vec![
        format!("read {}", config.display()),
        format!("read {}", app.display()),
        format!("read {}", log.display()),
    ];
    for (name, why) in ignored {
        expected.push(format!(
            "ignored {}: {why}",
            sb.path("fifod.d").join(name).display()
        ));
    }
    expected.push(format!(
        "ignored {}: not a regular file",
        sb.path("fifod.d/dir.toml").display()
    ));
    for line in &expected {
        assert!(
            check.stdout.lines().any(|l| l == line),
            "no {line:?} in\n{}",
            check.stdout
        );
    }
    assert!(
        check.stdout.contains("\napp: in -> app-out")
            && check.stdout.contains("\nroute[1]: in -> log"),
        "routes are numbered across the files, in order:\n{}",
        check.stdout
    );

    let mut d = Daemon::start_with(sb, &Launch::default());
    let r1 = crate::common::open_reader(&d.fifo("app-out"));
    let r2 = crate::common::open_reader(&d.fifo("log"));
    let w = crate::common::open_writer(&d.fifo("in"));
    crate::common::write_all(
        &w,
        b"to both\n",
        std::time::Instant::now() + crate::common::TIMEOUT,
    );
    assert_eq!(
        crate::common::read_exact(&r1, 8, crate::common::TIMEOUT),
        b"to both\n"
    );
    assert_eq!(
        crate::common::read_exact(&r2, 8, crate::common::TIMEOUT),
        b"to both\n"
    );
    d.stop_ok();
}

#[test]
fn an_error_in_a_fragment_is_located_in_that_file() {
    let sb = Sandbox::new();
    sb.write_config(MAIN);
    let config = sb.config_path().display().to_string();
    // Line 4 of the main file, as write_config lays it out: `[fifo.in]`.
    let dup = sb.write_fragment("10-dup.toml", "# in again\n[fifo.in]\n");
    let route = sb.write_fragment(
        "20-route.toml",
        "[[route]]\nfrom = [\"in\"]\nto = [\"elsewhere\"]\n",
    );
    let daemon = sb.write_fragment("30-daemon.toml", "[daemon]\nlog_level = \"debug\"\n");
    let check = sb.run_cmd("check", &Launch::default());
    check.assert_code(1);
    let expected = [
        format!(
            "{}:2:7: fifo.in: also defined in {config}:5:7",
            dup.display()
        ),
        format!(
            "{}:3:7: route[0].to: unknown endpoint \"elsewhere\"",
            route.display()
        ),
        format!(
            "{}:1:2: daemon: only the main file may have [daemon]; a fragment adds \
             [fifo.NAME], [process.NAME] and [[route]]",
            daemon.display()
        ),
    ];
    for line in &expected {
        assert!(
            check.stderr.lines().any(|l| l == line),
            "no {line:?} in\n{}",
            check.stderr
        );
    }
    // `run` refuses the set the same way, and makes nothing.
    let run = sb.run_expect_exit(&Launch::default());
    run.assert_code(78);
    assert!(run.stderr.contains(&expected[0]), "{}", run.stderr);
    assert!(!sb.run_dir().exists());
}

#[test]
fn a_reload_applies_fragments_added_changed_and_removed() {
    let mut d = Daemon::start(MAIN);
    // Added.
    d.sb.write_fragment("50-app.toml", APP);
    d.reload().expect("a reload with a new fragment");
    relays(&d.fifo("in"), &d.fifo("app-out"), b"through the fragment\n");
    // Changed: a mode, applied in place.
    d.sb.write_fragment(
        "50-app.toml",
        &APP.replace("[fifo.app-out]", "[fifo.app-out]\nmode = \"0640\""),
    );
    d.reload().expect("a reload with a changed fragment");
    let mode = fs::metadata(d.fifo("app-out"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o640);
    // A fragment others could change is refused; the set before stays.
    let other = d.sb.write_fragment("60-other.toml", "[fifo.other]\n");
    fs::set_permissions(&other, fs::Permissions::from_mode(0o666)).unwrap();
    let why = d
        .reload()
        .expect_err("a fragment writable by others was applied");
    assert!(why.contains("others could change it"), "{why}");
    assert!(!d.fifo("other").exists());
    fs::remove_file(&other).unwrap();
    // Removed: its FIFO goes.
    fs::remove_file(d.sb.path("fifod.d/50-app.toml")).unwrap();
    d.reload().expect("a reload without the fragment");
    assert!(!d.fifo("app-out").exists(), "{}", d.log());
    d.stop_ok();
}
