//! Command-line interface: help, version, usage errors, config discovery,
//! `check` output; the man pages and completion scripts made from it.

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use crate::common::{Daemon, IN_OUT, Launch, Sandbox, TIMEOUT, lstat, wait_child};

mod man_page;

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

const MAN_PAGES: [&str; 2] = ["man/fifod.8", "man/fifod.toml.5"];

/// Each shell's script, as `fifod completions SHELL` prints it and the
/// Debian package installs it.
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "completions/fifod.bash"),
    ("zsh", "completions/_fifod"),
    ("fish", "completions/fifod.fish"),
];

fn in_repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// What a program outside the project printed, or `None` when it is not
/// installed.
struct Tool {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn run_tool(program: &str, args: &[&str], env: &[(&str, &str)]) -> Option<Tool> {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let spawned = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("cannot run {program}: {e}"),
    };
    let Some(status) = wait_child(&mut child, TIMEOUT) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{program} {args:?} did not finish in {TIMEOUT:?}");
    };
    Some(Tool {
        status,
        stdout: fs::read_to_string(&out_path).unwrap(),
        stderr: fs::read_to_string(&err_path).unwrap(),
    })
}

/// The subcommands, as clap defines them.
fn command_names() -> Vec<String> {
    fifod::cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_string())
        .collect()
}

/// man/fifod.8 and the completion scripts are made from src/cli.rs, and
/// committed so that the Debian package takes them as they are.
#[test]
fn generated_files_are_up_to_date() {
    let sb = Sandbox::new();
    let mut generated = vec![("man/fifod.8", man_page::fifod_8())];
    for (shell, path) in COMPLETIONS {
        let out = sb.run_to_exit(&["completions", shell], &Launch::default());
        out.assert_code(0);
        generated.push((path, out.stdout));
    }
    let regenerate = std::env::var_os("FIFOD_REGENERATE").is_some();
    let mut stale = Vec::new();
    for (path, text) in &generated {
        let file = in_repo(path);
        if fs::read_to_string(&file).is_ok_and(|committed| committed == *text) {
            continue;
        }
        if regenerate {
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            fs::write(&file, text).unwrap();
            println!("note: regenerated {path}");
        } else {
            stale.push(*path);
        }
    }
    assert!(
        stale.is_empty(),
        "{} not up to date with src/cli.rs: run \
         `FIFOD_REGENERATE=1 cargo test --test tests generated_files` to update, and commit the result",
        stale.join(", ")
    );
}

/// What lintian runs on a package's man pages, with every groff warning on,
/// at a terminal's width and at lintian's; then groff for a typesetter, which
/// also knows the fonts.
#[test]
fn man_pages_render_without_warnings() {
    for page in MAN_PAGES {
        let file = in_repo(page);
        let file = file.to_str().unwrap();
        for width in ["80", "120"] {
            let env = [
                ("LC_ALL", "C.UTF-8"),
                ("MANROFFSEQ", ""),
                ("MANWIDTH", width),
            ];
            let args = ["--warnings=w", "-E", "UTF-8", "-l", "-Tutf8", "-Z", file];
            let Some(man) = run_tool("man", &args, &env) else {
                println!("note: skipped: man is not installed (Debian's man-db)");
                return;
            };
            assert!(
                man.status.success() && man.stderr.is_empty() && !man.stdout.is_empty(),
                "man -l {page} at {width} columns: {:?}\n{}",
                man.status,
                man.stderr
            );
        }
        let Some(groff) = run_tool("groff", &["-man", "-ww", "-z", file], &[]) else {
            println!("note: skipped: groff is not installed (Debian's groff-base)");
            return;
        };
        assert!(
            groff.status.success() && groff.stderr.is_empty(),
            "groff -man -ww {page}: {:?}\n{}",
            groff.status,
            groff.stderr
        );
    }
}

/// fifod.toml(5) is the README's config reference as a manual page: it has
/// a section for each of the reference's tables, and names every key in them.
#[test]
fn fifod_toml_5_has_every_key_of_the_config_reference() {
    let readme = fs::read_to_string(in_repo("README.md")).unwrap();
    let page = fs::read_to_string(in_repo("man/fifod.toml.5")).unwrap();
    let title = format!(
        ".TH FIFOD.TOML 5 \"\" \"fifod {}\"",
        env!("CARGO_PKG_VERSION")
    );
    assert!(page.contains(&title), "man/fifod.toml.5 lacks {title:?}");

    let start = readme.find("\n## Config reference\n").unwrap();
    let reference = &readme[start + 1..];
    let reference = &reference[..reference.find("\n## ").unwrap()];
    let mut table = None;
    let mut keys = Vec::new();
    for line in reference.lines() {
        if let Some(heading) = line.strip_prefix("### `").and_then(|h| h.strip_suffix('`')) {
            assert!(
                page.contains(&format!(".SH \"{heading}\"\n")),
                "man/fifod.toml.5 has no section {heading}"
            );
            table = Some(heading);
            continue;
        }
        let Some(table) = table else { continue };
        let Some(first_cell) = line.strip_prefix("| `").and_then(|l| l.split(" |").next()) else {
            continue;
        };
        for key in first_cell.split(", ") {
            keys.push((table, key.trim_matches('`').to_string()));
        }
    }
    assert!(
        keys.len() >= 25,
        "too few keys found in the README: {keys:?}"
    );
    let missing: Vec<_> = keys
        .iter()
        .filter(|(_, key)| {
            !page.contains(&format!("\n.B {key}\n")) && !page.contains(&format!("\n.BR {key} \""))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "man/fifod.toml.5 does not describe {missing:?}"
    );
}

#[test]
fn completions_name_every_command_and_their_shells_accept_them() {
    let sb = Sandbox::new();
    let commands = command_names();
    for (shell, _) in COMPLETIONS {
        let out = sb.run_to_exit(&["completions", shell], &Launch::default());
        out.assert_code(0);
        assert!(!out.stdout.is_empty(), "{shell}: no script");
        for command in &commands {
            assert!(
                out.stdout.contains(command.as_str()),
                "the {shell} script does not mention {command}"
            );
        }
        let script = sb.path(&format!("fifod.{shell}"));
        fs::write(&script, &out.stdout).unwrap();
        let script = script.to_str().unwrap();
        let syntax = match shell {
            "fish" => run_tool("fish", &["--no-execute", script], &[]),
            _ => run_tool(shell, &["-n", script], &[]),
        };
        let Some(syntax) = syntax else {
            println!("note: skipped: {shell} is not installed, its script was not checked");
            continue;
        };
        assert!(
            syntax.status.success() && syntax.stderr.is_empty(),
            "{shell} rejects its script: {:?}\n{}",
            syntax.status,
            syntax.stderr
        );
        // Where the shell can be asked without a terminal, it completes
        // `fifod sta` to `status`.
        let completed = match shell {
            "bash" => run_tool(
                "bash",
                &[
                    "-c",
                    r#"source "$1" && COMP_WORDS=(fifod sta) COMP_CWORD=1 && _fifod fifod sta fifod && echo "${COMPREPLY[@]}""#,
                    "bash",
                    script,
                ],
                &[],
            ),
            "fish" => run_tool(
                "fish",
                &["-c", r#"source $argv[1]; complete -C "fifod sta""#, script],
                &[],
            ),
            _ => continue,
        };
        let completed = completed.unwrap();
        assert!(
            completed.status.success() && completed.stdout.starts_with("status"),
            "{shell} completes `fifod sta` as {:?} ({:?})\n{}",
            completed.stdout,
            completed.status,
            completed.stderr
        );
    }
}
