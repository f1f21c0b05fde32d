//! Command-line interface: help, version, usage errors, config discovery,
//! `check` output.

use std::ffi::OsString;

use crate::common::{Daemon, IN_OUT, Launch, Sandbox, lstat};

const VALID: &str = r#"
[fifo.in]
mode = "0620"

[fifo.out]

[fifo.in2]
path = "sub/in2"
mode = "0640"

[fifo.out2]
path = "{ROOT}/elsewhere/out2"

[[route]]
from = ["in"]
to = ["out"]
buffer = "1MiB"
when_full = "block"

[[route]]
from = ["in2"]
to = ["out2"]
buffer = "64KiB"
when_full = "drop-oldest"
"#;

#[test]
fn help_exits_0() {
    let sb = Sandbox::new();
    let out = sb.run_to_exit(&["--help"], &Launch::default());
    out.assert_code(0);
    assert!(
        out.stdout.contains("run"),
        "help lacks `run`: {}",
        out.stdout
    );
    assert!(
        out.stdout.contains("check"),
        "help lacks `check`: {}",
        out.stdout
    );
}

#[test]
fn version_exits_0() {
    let sb = Sandbox::new();
    let out = sb.run_to_exit(&["--version"], &Launch::default());
    out.assert_code(0);
    assert_eq!(out.stdout.trim_end(), "fifod 0.1.0");
}

#[test]
fn unknown_subcommand_exits_2() {
    let sb = Sandbox::new();
    let out = sb.run_to_exit(&["frobnicate"], &Launch::default());
    out.assert_code(2);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn unknown_flag_exits_2() {
    let sb = Sandbox::new();
    sb.write_config(VALID);
    let cfg = sb.config_path();
    let out = sb.run_to_exit(
        &[
            OsString::from("run"),
            "--config".into(),
            cfg.into(),
            "--frobnicate".into(),
        ],
        &Launch::default(),
    );
    out.assert_code(2);
    assert!(
        !sb.run_dir().exists(),
        "a usage error must not start anything"
    );
}

#[test]
fn run_missing_config_exits_1_naming_the_file() {
    let sb = Sandbox::new();
    let missing = sb.path("no-such-dir/fifod.toml");
    let out = sb.run_to_exit(
        &[
            OsString::from("run"),
            "--config".into(),
            missing.clone().into(),
        ],
        &Launch::default(),
    );
    out.assert_code(1);
    assert!(
        out.stderr.contains(&missing.display().to_string()),
        "stderr does not name {}: {}",
        missing.display(),
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn fifod_config_env_is_used_by_check() {
    let sb = Sandbox::new();
    let cfg = sb.write_config(VALID);
    let launch = Launch {
        env: vec![("FIFOD_CONFIG".into(), cfg.into())],
        ..Launch::default()
    };
    let out = sb.run_to_exit(&["check"], &launch);
    out.assert_code(0);
    let expected = format!("fifo in: {} (input, mode 0620)", sb.fifo("in").display());
    assert!(
        out.stdout.lines().any(|l| l == expected),
        "missing {expected:?} in:\n{}",
        out.stdout
    );
}

#[test]
fn fifod_config_env_is_used_by_run() {
    let sb = Sandbox::new();
    let cfg = sb.write_config(IN_OUT);
    let launch = Launch {
        env: vec![("FIFOD_CONFIG".into(), cfg.into())],
        ..Launch::default()
    };
    let mut d = Daemon::start_args(sb, &[OsString::from("run")], &launch);
    assert!(lstat(&d.fifo("in")).is_some());
    assert!(lstat(&d.fifo("out")).is_some());
    d.stop_ok();
}

#[test]
fn fifod_config_env_missing_file_is_named() {
    let sb = Sandbox::new();
    let missing = sb.path("absent.toml");
    let launch = Launch {
        env: vec![("FIFOD_CONFIG".into(), missing.clone().into())],
        ..Launch::default()
    };
    let out = sb.run_to_exit(&["run"], &launch);
    out.assert_code(1);
    assert!(
        out.stderr.contains(&missing.display().to_string()),
        "stderr does not name {}: {}",
        missing.display(),
        out.stderr
    );
}

#[test]
fn check_prints_summary_and_creates_nothing() {
    let sb = Sandbox::new();
    sb.write_config(VALID);
    let out = sb.run_cmd("check", &Launch::default());
    out.assert_code(0);
    let run = sb.run_dir();
    let expected = [
        format!("fifo in: {} (input, mode 0620)", run.join("in").display()),
        format!(
            "fifo out: {} (output, mode 0600)",
            run.join("out").display()
        ),
        format!(
            "fifo in2: {} (input, mode 0640)",
            run.join("sub/in2").display()
        ),
        format!(
            "fifo out2: {} (output, mode 0600)",
            sb.path("elsewhere/out2").display()
        ),
        "route[0]: in -> out (buffer 1MiB, when_full block)".to_string(),
        "route[1]: in2 -> out2 (buffer 64KiB, when_full drop-oldest)".to_string(),
    ];
    for line in &expected {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "missing {line:?} in:\n{}",
            out.stdout
        );
    }
    let fifo_lines = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("fifo "))
        .count();
    let route_lines = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("route["))
        .count();
    assert_eq!((fifo_lines, route_lines), (4, 2), "{}", out.stdout);
    assert!(!run.exists(), "check created {}", run.display());
    assert!(!sb.path("elsewhere").exists(), "check created elsewhere/");
}

#[test]
fn default_config_is_etc_fifod_fifod_toml() {
    let default = std::path::Path::new("/etc/fifod/fifod.toml");
    if default.exists() {
        eprintln!(
            "note: skipping: {} exists on this machine",
            default.display()
        );
        return;
    }
    let sb = Sandbox::new();
    let out = sb.run_to_exit(&["run"], &Launch::default());
    out.assert_code(1);
    assert!(
        out.stderr.contains("/etc/fifod/fifod.toml"),
        "stderr does not name the default config: {}",
        out.stderr
    );
}
