//! Invalid configurations: `check` exits 1 and `run` exits 78, both printing
//! one `FILE:LINE:COL: KEY: MESSAGE` line per error, sorted by position,
//! FILE exactly as given to `--config`.

use crate::common::{Launch, Sandbox};

/// How the message after `KEY: ` must look.
#[derive(Debug, Clone, Copy)]
enum Msg {
    Exact(&'static str),
    Starts(&'static str),
    Contains(&'static str),
    Any,
}

/// One expected error.
#[derive(Debug)]
struct Expect {
    line: usize,
    col: usize,
    key: &'static str,
    msg: Msg,
}

/// Position (1-based line, 1-based column) of `needle` in the single line of
/// `cfg` that contains `line_pat`.
fn at(cfg: &str, line_pat: &str, needle: &str) -> (usize, usize) {
    let hits: Vec<(usize, &str)> = cfg
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(line_pat))
        .collect();
    assert_eq!(hits.len(), 1, "test bug: {line_pat:?} must match one line");
    let (i, line) = hits[0];
    let col = line
        .find(needle)
        .unwrap_or_else(|| panic!("test bug: {needle:?} not in {line:?}"));
    (i + 1, col + 1)
}

fn err(cfg: &str, line_pat: &str, needle: &str, key: &'static str, msg: Msg) -> Expect {
    let (line, col) = at(cfg, line_pat, needle);
    Expect {
        line,
        col,
        key,
        msg,
    }
}

/// Lines of `stderr` that look like `FILE:N:N: ...`.
fn error_lines<'a>(stderr: &'a str, file: &str) -> Vec<&'a str> {
    stderr
        .lines()
        .filter(|l| {
            let Some(rest) = l.strip_prefix(file).and_then(|r| r.strip_prefix(':')) else {
                return false;
            };
            let mut parts = rest.splitn(3, ':');
            let line = parts.next().unwrap_or("");
            let col = parts.next().unwrap_or("");
            let tail = parts.next().unwrap_or("");
            !line.is_empty()
                && line.bytes().all(|b| b.is_ascii_digit())
                && !col.is_empty()
                && col.bytes().all(|b| b.is_ascii_digit())
                && tail.starts_with(' ')
        })
        .collect()
}

fn assert_errors_in(stderr: &str, file: &str, expected: &[Expect], what: &str) {
    let lines = error_lines(stderr, file);
    assert_eq!(
        lines.len(),
        expected.len(),
        "{what}: expected {} error line(s), got {}:\n{stderr}",
        expected.len(),
        lines.len()
    );
    for (line, exp) in lines.iter().zip(expected) {
        let prefix = format!("{file}:{}:{}: {}: ", exp.line, exp.col, exp.key);
        let Some(msg) = line.strip_prefix(&prefix) else {
            panic!(
                "{what}: expected a line starting {prefix:?}, got {line:?}\n--- stderr ---\n{stderr}"
            );
        };
        let ok = match exp.msg {
            Msg::Exact(m) => msg == m,
            Msg::Starts(m) => msg.starts_with(m),
            Msg::Contains(m) => msg.contains(m),
            Msg::Any => !msg.trim().is_empty(),
        };
        assert!(
            ok,
            "{what}: message of {line:?} does not match {:?}",
            exp.msg
        );
    }
}

/// Writes `cfg` verbatim (`{RUN}` substituted) and runs `check` then `run`
/// with `--config fifod.toml` from the sandbox root.
fn assert_config_errors(cfg: &str, expected: &[Expect]) {
    let sb = Sandbox::new();
    sb.write_raw_config(cfg);
    let launch = Launch::default();

    let check = sb.run_to_exit(&["check", "--config", "fifod.toml"], &launch);
    check.assert_code(1);
    assert_errors_in(&check.stderr, "fifod.toml", expected, "check");
    assert!(!check.stderr.contains("panicked"), "{}", check.stderr);

    let run = sb.run_to_exit(&["run", "--config", "fifod.toml"], &launch);
    run.assert_code(78);
    assert_errors_in(&run.stderr, "fifod.toml", expected, "run");
    assert_eq!(
        error_lines(&check.stderr, "fifod.toml"),
        error_lines(&run.stderr, "fifod.toml"),
        "check and run report different errors"
    );
    assert!(!sb.run_dir().exists(), "an invalid config created the dir");
}

#[test]
fn unknown_key_in_fifo() {
    let cfg = r#"[daemon]
dir = "{RUN}"

[fifo.in]
mode = "0620"
  ouput = "x"

[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
"#;
    assert_config_errors(
        cfg,
        &[err(
            cfg,
            "ouput",
            "ouput",
            "fifo.in.ouput",
            Msg::Starts("unknown key"),
        )],
    );
}

#[test]
fn unknown_key_in_daemon() {
    let cfg = r#"[daemon]
dir = "{RUN}"
   foo = 1

[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
"#;
    assert_config_errors(
        cfg,
        &[err(
            cfg,
            "foo",
            "foo",
            "daemon.foo",
            Msg::Starts("unknown key"),
        )],
    );
}

#[test]
fn unknown_key_in_route() {
    let cfg = r#"[daemon]
dir = "{RUN}"

[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
 bufer = "64KiB"
"#;
    assert_config_errors(
        cfg,
        &[err(
            cfg,
            "bufer",
            "bufer",
            "route[0].bufer",
            Msg::Starts("unknown key"),
        )],
    );
}

#[test]
fn wrong_toml_types() {
    let cfg = r#"[daemon]
dir = "{RUN}"

[fifo.in]
path =   42

[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
when_full = true
"#;
    assert_config_errors(
        cfg,
        &[
            err(cfg, "path =", "42", "fifo.in.path", Msg::Any),
            err(cfg, "when_full", "true", "route[0].when_full", Msg::Any),
        ],
    );
}

#[test]
fn bad_modes() {
    let cfg = r#"[daemon]
dir = "{RUN}"
dir_mode = "rwx"

[fifo.a]
mode = "999"

[fifo.b]
mode =  "0o7777"

[fifo.c]
mode = "rw"

[fifo.d]
mode = "1777"

[[route]]
from = ["a", "b"]
to = ["c", "d"]
"#;
    assert_config_errors(
        cfg,
        &[
            err(cfg, "dir_mode", "\"rwx\"", "daemon.dir_mode", Msg::Any),
            err(cfg, "\"999\"", "\"999\"", "fifo.a.mode", Msg::Any),
            err(cfg, "\"0o7777\"", "\"0o7777\"", "fifo.b.mode", Msg::Any),
            err(cfg, "\"rw\"", "\"rw\"", "fifo.c.mode", Msg::Any),
            err(cfg, "\"1777\"", "\"1777\"", "fifo.d.mode", Msg::Any),
        ],
    );
}

#[test]
fn bad_sizes() {
    let cfg = r#"[daemon]
dir = "{RUN}"
pipe_size = "lots"

[fifo.in]
[fifo.out]
[fifo.in2]
[fifo.out2]

[[route]]
from = ["in"]
to = ["out"]
buffer = "12XB"

[[route]]
from = ["in2"]
to = ["out2"]
buffer =    "1KiB"
"#;
    assert_config_errors(
        cfg,
        &[
            err(cfg, "pipe_size", "\"lots\"", "daemon.pipe_size", Msg::Any),
            err(cfg, "12XB", "\"12XB\"", "route[0].buffer", Msg::Any),
            err(cfg, "1KiB", "\"1KiB\"", "route[1].buffer", Msg::Any),
        ],
    );
}

#[test]
fn bad_duration() {
    let cfg = r#"[daemon]
dir = "{RUN}"
shutdown_timeout = "soon"

[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
"#;
    assert_config_errors(
        cfg,
        &[err(
            cfg,
            "shutdown_timeout",
            "\"soon\"",
            "daemon.shutdown_timeout",
            Msg::Any,
        )],
    );
}

#[test]
fn bad_when_full() {
    let cfg = r#"[daemon]
dir = "{RUN}"

[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
when_full = "drop-random"
"#;
    assert_config_errors(
        cfg,
        &[err(
            cfg,
            "when_full",
            "\"drop-random\"",
            "route[0].when_full",
            Msg::Any,
        )],
    );
}

#[test]
fn bad_log_level() {
    let cfg = r#"[daemon]
dir = "{RUN}"
log_level = "loud"

[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
"#;
    assert_config_errors(
        cfg,
        &[err(
            cfg,
            "log_level",
            "\"loud\"",
            "daemon.log_level",
            Msg::Any,
        )],
    );
}

#[test]
fn unknown_user_and_group() {
    let cfg = r#"[daemon]
dir = "{RUN}"

[fifo.in]
owner = "no-such-user-fifod"
group =  "no-such-group-fifod"

[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
"#;
    assert_config_errors(
        cfg,
        &[
            err(
                cfg,
                "owner",
                "\"no-such-user-fifod\"",
                "fifo.in.owner",
                Msg::Contains("unknown user \"no-such-user-fifod\""),
            ),
            err(
                cfg,
                "group",
                "\"no-such-group-fifod\"",
                "fifo.in.group",
                Msg::Contains("unknown group \"no-such-group-fifod\""),
            ),
        ],
    );
}

#[test]
fn path_with_dotdot() {
    let cfg = r#"[daemon]
dir = "{RUN}"

[fifo.in]
path = "sub/../../escape"

[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
"#;
    assert_config_errors(
        cfg,
        &[err(cfg, "escape", "\"sub", "fifo.in.path", Msg::Any)],
    );
}

#[test]
fn unknown_endpoint_with_suggestion() {
    let cfg = r#"[daemon]
dir = "{RUN}"

[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["ouput"]
"#;
    assert_config_errors(
        cfg,
        &[err(
            cfg,
            "ouput",
            "\"ouput\"",
            "route[0].to",
            Msg::Exact("unknown endpoint \"ouput\" (did you mean \"out\"?)"),
        )],
    );
}

#[test]
fn unknown_endpoint_without_suggestion() {
    let cfg = r#"[daemon]
dir = "{RUN}"

[fifo.in]
[fifo.out]

[[route]]
from = ["in",   "qwertyuiop"]
to = ["out"]
"#;
    assert_config_errors(
        cfg,
        &[err(
            cfg,
            "qwertyuiop",
            "\"qwertyuiop\"",
            "route[0].from",
            Msg::Exact("unknown endpoint \"qwertyuiop\""),
        )],
    );
}

#[test]
fn endpoint_both_input_and_output() {
    let cfg = r#"[daemon]
dir = "{RUN}"

[fifo.in]
[fifo.mid]
[fifo.out]

[[route]]
from = ["in"]
to = ["mid"]

[[route]]
from = [ "mid"]
to = ["out"]
"#;
    assert_config_errors(
        cfg,
        &[err(
            cfg,
            "from = [ \"mid\"]",
            "\"mid\"",
            "route[1].from",
            Msg::Contains("both an input and an output"),
        )],
    );
}

#[test]
fn endpoint_both_input_and_output_in_one_route() {
    let cfg = r#"[daemon]
dir = "{RUN}"

[fifo.loop]
[fifo.out]

[[route]]
from = ["loop"]
to = ["out",  "loop"]
"#;
    assert_config_errors(
        cfg,
        &[err(
            cfg,
            "to = ",
            "\"loop\"",
            "route[0].to",
            Msg::Contains("both an input and an output"),
        )],
    );
}

#[test]
fn duplicate_paths() {
    let cfg = r#"[daemon]
dir = "{RUN}"

[fifo.a]
path = "sub/x"

[fifo.b]
path =  "sub/./x"

[fifo.plain]

[fifo.explicit]
path = "plain"

[fifo.abs]
path = "{RUN}/c"

[fifo.rel]
path =   "c"

[[route]]
from = ["a", "plain", "abs"]
to = ["b", "explicit", "rel"]
"#;
    assert_config_errors(
        cfg,
        &[
            err(
                cfg,
                "sub/./x",
                "\"",
                "fifo.b.path",
                Msg::Contains("same path as fifo.a"),
            ),
            err(
                cfg,
                "path = \"plain\"",
                "\"",
                "fifo.explicit.path",
                Msg::Contains("same path as fifo.plain"),
            ),
            err(
                cfg,
                "\"c\"",
                "\"",
                "fifo.rel.path",
                Msg::Contains("same path as fifo.abs"),
            ),
        ],
    );
}

#[test]
fn empty_route_sides() {
    let cfg = r#"[daemon]
dir = "{RUN}"

[fifo.in]
[fifo.out]

[[route]]
from =  []
to = ["out"]

[[route]]
from = ["in"]
to = [ ]
"#;
    assert_config_errors(
        cfg,
        &[
            err(
                cfg,
                "from =  []",
                "[",
                "route[0].from",
                Msg::Contains("at least one endpoint"),
            ),
            err(
                cfg,
                "to = [ ]",
                "[",
                "route[1].to",
                Msg::Contains("at least one endpoint"),
            ),
        ],
    );
}

#[test]
fn toml_syntax_error() {
    let cfg = r#"[daemon]
dir = "{RUN}"

[fifo.in]
mode = @

[fifo.out]

[[route]]
from = ["in"]
to = ["out"]
"#;
    let (line, col) = at(cfg, "mode = @", "@");
    let sb = Sandbox::new();
    sb.write_raw_config(cfg);
    for (cmd, code) in [("check", 1), ("run", 78)] {
        let out = sb.run_to_exit(&[cmd, "--config", "fifod.toml"], &Launch::default());
        out.assert_code(code);
        let prefix = format!("fifod.toml:{line}:{col}: ");
        let lines = error_lines(&out.stderr, "fifod.toml");
        assert_eq!(lines.len(), 1, "{cmd}: {}", out.stderr);
        assert!(
            lines[0].starts_with(&prefix),
            "{cmd}: expected {prefix:?}, got {:?}",
            lines[0]
        );
    }
    assert!(!sb.run_dir().exists());
}

#[test]
fn three_errors_three_lines_in_order() {
    let cfg = r#"[daemon]
dir = "{RUN}"

[fifo.in]
mode = "rw"

[fifo.out]
colour = "blue"

[[route]]
from = ["in"]
to = ["ouput"]
"#;
    assert_config_errors(
        cfg,
        &[
            err(cfg, "\"rw\"", "\"rw\"", "fifo.in.mode", Msg::Any),
            err(
                cfg,
                "colour",
                "colour",
                "fifo.out.colour",
                Msg::Starts("unknown key"),
            ),
            err(
                cfg,
                "ouput",
                "\"ouput\"",
                "route[0].to",
                Msg::Exact("unknown endpoint \"ouput\" (did you mean \"out\"?)"),
            ),
        ],
    );
}

#[test]
fn file_name_is_printed_as_given() {
    let cfg = r#"[daemon]
dir = "{RUN}"

[fifo.in]
[fifo.out]

[[route]]
from = ["in"]
to = ["ouput"]
"#;
    let sb = Sandbox::new();
    let abs = sb.write_raw_config(cfg);
    let (line, col) = at(cfg, "ouput", "\"ouput\"");
    let abs = abs.display().to_string();
    let dotted = "./fifod.toml";
    for given in [abs.as_str(), dotted] {
        let out = sb.run_to_exit(&["check", "--config", given], &Launch::default());
        out.assert_code(1);
        let expected = format!(
            "{given}:{line}:{col}: route[0].to: unknown endpoint \"ouput\" (did you mean \"out\"?)"
        );
        assert!(
            out.stderr.lines().any(|l| l == expected),
            "missing {expected:?} in:\n{}",
            out.stderr
        );
    }
}
