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
        let prefix = match exp.key {
            // A TOML syntax error names no key.
            "" => format!("{file}:{}:{}: ", exp.line, exp.col),
            key => format!("{file}:{}:{}: {key}: ", exp.line, exp.col),
        };
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

// ---------------------------------------------------------------------------
// The spec: every kind of bad input, one row each
// ---------------------------------------------------------------------------
//
// The tests above already cover: an unknown key in each table, `path = 42`
// and `when_full = true`, modes "999", "0o7777", "rw" and "1777" and a
// dir_mode "rwx", sizes "lots", "12XB" and "1KiB", a bad duration,
// when_full and log_level, an unknown FIFO owner and group, "..", unknown
// endpoints, a FIFO both input and output, duplicate paths, an empty `from`
// or `to`, `mode = @`, and several errors in file order; cli.rs covers a
// missing config for `run`. The rows below are the rest.

/// What stands at `--config fifod.toml`.
#[derive(Debug)]
enum Input {
    /// This text, `{RUN}` replaced by the sandbox's run dir.
    Text(String),
    /// These bytes, `{RUN}` replaced likewise.
    Bytes(Vec<u8>),
    /// A FIFO that nobody writes.
    Fifo,
    Dir,
    /// A symbolic link to this path.
    Link(&'static str),
    Missing,
}

/// What `check` and `run` make of it. Neither ever panics.
#[derive(Debug)]
enum Verdict {
    /// Invalid: `check` exits 1 and `run` 78, both printing exactly these
    /// errors in this order; `run` creates nothing.
    Errors(Vec<Expect>),
    /// Not read: both exit 1 with `fifod.toml: cannot read config: REASON`;
    /// `run` creates nothing.
    Unreadable(&'static str),
    /// Valid: `check` exits 0 and prints exactly these lines, `{RUN}`
    /// replaced (`run` is not started).
    Valid(&'static [&'static str]),
}

#[derive(Debug)]
struct Row {
    what: &'static str,
    input: Input,
    verdict: Verdict,
}

/// Where a located error is: `(line pattern, needle, key, message)` as for
/// `err`; the needle `EOL` stands for the end of the line.
type Loc = (&'static str, &'static str, &'static str, Msg);
const EOL: &str = "\n";

/// `body` after a `[daemon]` table that sets `dir`.
fn with_dir(body: &str) -> String {
    format!("[daemon]\ndir = \"{{RUN}}\"\n\n{body}")
}

fn locate(cfg: &str, locs: &[Loc]) -> Vec<Expect> {
    locs.iter()
        .map(|&(line_pat, needle, key, msg)| {
            if needle != EOL {
                return err(cfg, line_pat, needle, key, msg);
            }
            let (line, _) = at(cfg, line_pat, "");
            let col = cfg.lines().nth(line - 1).unwrap_or("").len() + 1;
            Expect {
                line,
                col,
                key,
                msg,
            }
        })
        .collect()
}

fn invalid(what: &'static str, cfg: String, locs: &[Loc]) -> Row {
    let verdict = Verdict::Errors(locate(&cfg, locs));
    Row {
        what,
        input: Input::Text(cfg),
        verdict,
    }
}

fn unreadable(what: &'static str, input: Input, reason: &'static str) -> Row {
    Row {
        what,
        input,
        verdict: Verdict::Unreadable(reason),
    }
}

/// A config that declares no FIFO and no process: one error, at 1:1.
fn nothing_declared(what: &'static str, text: &str) -> Row {
    Row {
        what,
        input: Input::Text(text.to_string()),
        verdict: Verdict::Errors(vec![Expect {
            line: 1,
            col: 1,
            key: "fifo",
            msg: Msg::Starts("the config declares no FIFO and no process"),
        }]),
    }
}

fn valid(what: &'static str, input: Input, lines: &'static [&'static str]) -> Row {
    Row {
        what,
        input,
        verdict: Verdict::Valid(lines),
    }
}

const NAME_OR_ID: Msg = Msg::Exact("expected a name or a numeric id from 0 to 4294967295");
const NO_NUL: Msg = Msg::Exact("must not contain a NUL byte");
const MAX_CONFIG_BYTES: usize = 1 << 20;

fn rows() -> Vec<Row> {
    use Msg::*;
    let mut rows = vec![
        // TOML syntax: located, without a key.
        invalid(
            "a table header without its ]",
            with_dir("[fifo.in\n[fifo.out]\n"),
            &[("[fifo.in", EOL, "", Starts("unclosed table"))],
        ),
        invalid(
            "a string without its closing quote",
            with_dir("[fifo.in]\npath = \"in\n[fifo.out]\n"),
            &[("path", EOL, "", Starts("invalid basic string"))],
        ),
        invalid(
            "a key without a value",
            with_dir("[fifo.in]\npath\n"),
            &[("path", EOL, "", Starts("key with no value"))],
        ),
        invalid(
            "a route name with a space",
            with_dir(
                "[fifo.in]\n[fifo.out]\n[[route]]\nname = \"my route\"\nfrom = [\"in\"]\nto = [\"out\"]\n",
            ),
            &[(
                "my route",
                "\"my route\"",
                "route[0].name",
                Starts("invalid route name \"my route\""),
            )],
        ),
        invalid(
            "two routes with one name",
            with_dir(
                "[fifo.a]\n[fifo.b]\n[fifo.c]\n[[route]]\nname = \"feed\"\nfrom = [\"a\"]\nto = [\"b\"]\n\
                 [[route]]\nname = \"feed\" # again\nfrom = [\"a\"]\nto = [\"c\"]\n",
            ),
            &[(
                "# again",
                "\"feed\"",
                "route[1].name",
                Exact("route \"feed\" is named twice"),
            )],
        ),
        invalid(
            "a key given twice",
            with_dir("[fifo.in]\nmode = \"0600\"\nmode = \"0640\"\n"),
            &[("\"0640\"", "mode", "", Exact("duplicate key"))],
        ),
        invalid(
            "a table given twice",
            with_dir("[fifo.in]\n[fifo.out]\n[fifo.in] # again\n"),
            &[("# again", "in", "", Exact("duplicate key"))],
        ),
        invalid(
            "a raw NUL byte (not the escape) in a string",
            with_dir("[fifo.in]\npath = \"i\0n\"\n"),
            &[("path", "\0", "", Starts("invalid basic string"))],
        ),
        invalid(
            "a bare carriage return",
            with_dir("[fifo.in]\nmode = \"0600\"\r[fifo.out]\n"),
            &[(
                "mode",
                "[fifo.out]",
                "",
                Starts("carriage return must be followed by newline"),
            )],
        ),
        // Errors are located the same with CRLF line ends and after a BOM.
        invalid(
            "CRLF line ends",
            "[daemon]\r\ndir = \"{RUN}\"\r\n\r\n[fifo.in]\r\nmode = \"999\"\r\n".to_string(),
            &[(
                "mode",
                "\"999\"",
                "fifo.in.mode",
                Starts("invalid mode \"999\""),
            )],
        ),
        // Wrong TOML types.
        invalid(
            "top-level tables of the wrong type",
            "fifo = 1\nprocess = \"p\"\nroute = { from = [\"a\"] }\n[daemon]\ndir = \"{RUN}\"\n"
                .to_string(),
            &[
                (
                    "fifo =",
                    "1",
                    "fifo",
                    Exact("expected tables such as [fifo.in]"),
                ),
                (
                    "process =",
                    "\"p\"",
                    "process",
                    Exact("expected tables such as [process.tool]"),
                ),
                (
                    "route =",
                    "{",
                    "route",
                    Exact("expected tables such as [[route]]"),
                ),
            ],
        ),
        invalid(
            "[daemon] that is not a table",
            "daemon = \"/run/x\"\n".to_string(),
            &[("daemon", "\"", "daemon", Exact("expected a table"))],
        ),
        invalid(
            "an array of [[fifo.x]] tables",
            with_dir("[[fifo.x]]\n"),
            &[("[[fifo.x]]", "[[", "fifo.x", Exact("expected a table"))],
        ),
        invalid(
            "wrong types in processes and routes",
            with_dir(
                "[fifo.in]\n[fifo.out]\n\
                 [process.p]\ncommand = \"cat\"\n\
                 [process.q]\ncommand = [\"cat\"]\nenv = [\"A=1\"]\n\
                 [process.r]\ncommand = [\"cat\", 1]\n\
                 [[route]]\nfrom = \"in\"\nto = [\"out\"]\n",
            ),
            &[
                (
                    "command = \"cat\"",
                    "\"",
                    "process.p.command",
                    Exact("invalid type: string \"cat\", expected a sequence"),
                ),
                (
                    "env =",
                    "[",
                    "process.q.env",
                    Exact("invalid type: sequence, expected a map"),
                ),
                (
                    "\"cat\", 1",
                    "1",
                    "process.r.command",
                    Exact("invalid type: integer `1`, expected a string"),
                ),
                (
                    "from =",
                    "\"",
                    "route[0].from",
                    Exact("invalid type: string \"in\", expected a sequence"),
                ),
            ],
        ),
        invalid(
            "ids that are not names nor numbers from 0 to 2^32-1",
            with_dir(
                "[fifo.a]\nowner = -1\n[fifo.b]\ngroup = 4294967296\n\
                 [fifo.c]\nowner = true\n\
                 [process.p]\ncommand = [\"cat\"]\nuser = 1.5\n",
            ),
            &[
                ("-1", "-1", "fifo.a.owner", NAME_OR_ID),
                ("4294967296", "4294967296", "fifo.b.group", NAME_OR_ID),
                ("true", "true", "fifo.c.owner", NAME_OR_ID),
                ("1.5", "1.5", "process.p.user", NAME_OR_ID),
            ],
        ),
        invalid(
            "the id chown reads as \"leave it as it is\"",
            with_dir("[fifo.a]\nowner = 4294967295\n[fifo.b]\ngroup = \"4294967295\"\n"),
            &[
                (
                    "owner",
                    "4294967295",
                    "fifo.a.owner",
                    Starts("4294967295 is (uid_t) -1"),
                ),
                (
                    "group",
                    "\"4294967295\"",
                    "fifo.b.group",
                    Starts("4294967295 is (uid_t) -1"),
                ),
            ],
        ),
        invalid(
            "the root directory as dir",
            "[daemon]\ndir = \"/\"\n[fifo.in]\n".to_string(),
            &[(
                "dir",
                "\"/\"",
                "daemon.dir",
                Starts("/ is a system directory"),
            )],
        ),
        invalid(
            "a system directory as dir, spelt another way",
            "[daemon]\ndir = \"/var//run/\"\n[fifo.in]\n".to_string(),
            &[(
                "dir",
                "\"/var",
                "daemon.dir",
                Starts("/var/run is a system directory"),
            )],
        ),
        // Out of range.
        invalid(
            "daemon sizes and durations out of range",
            "[daemon]\ndir = \"{RUN}\"\npipe_size = \"2GiB\"\nshutdown_timeout = \"61m\"\n"
                .to_string(),
            &[
                (
                    "pipe_size",
                    "\"",
                    "daemon.pipe_size",
                    Exact("2GiB is out of range: must be between 4KiB and 1GiB"),
                ),
                (
                    "shutdown_timeout",
                    "\"",
                    "daemon.shutdown_timeout",
                    Exact("must be at most 60m"),
                ),
            ],
        ),
        invalid(
            "route sizes out of range",
            with_dir(
                "[fifo.a]\n[fifo.b]\n\
                 [[route]]\nfrom = [\"a\"]\nto = [\"b\"]\nbuffer = \"18014398509481984GiB\"\n\
                 [[route]]\nfrom = [\"a\"]\nto = [\"b\"]\nmax_line = \"0\"\n\
                 [[route]]\nfrom = [\"a\"]\nto = [\"b\"]\nbuffer = \"4KiB\"\nmax_line = \"8KiB\"\n",
            ),
            &[
                ("GiB", "\"", "route[0].buffer", Starts("invalid size")),
                (
                    "\"0\"",
                    "\"",
                    "route[1].max_line",
                    Exact("must be at least 1B"),
                ),
                (
                    "\"8KiB\"",
                    "\"",
                    "route[2].max_line",
                    Exact("8KiB is larger than the route's buffer"),
                ),
            ],
        ),
        invalid(
            "a restart delay over 60m",
            with_dir("[process.p]\ncommand = [\"cat\"]\nrestart_delay = \"61m\"\n"),
            &[(
                "restart_delay",
                "\"",
                "process.p.restart_delay",
                Exact("must be at most 60m"),
            )],
        ),
        invalid(
            "a dir_mode that lets everyone write",
            "[daemon]\ndir = \"{RUN}\"\ndir_mode = \"0777\"\n".to_string(),
            &[(
                "dir_mode",
                "\"",
                "daemon.dir_mode",
                Contains("lets everyone write"),
            )],
        ),
        // Users and groups.
        invalid(
            "a process user or group that does not exist",
            with_dir(
                "[process.p]\ncommand = [\"cat\"]\nuser = \"no-such-user-fifod\"\n\
                 [process.q]\ncommand = [\"cat\"]\ngroup = \"no-such-group-fifod\"\n",
            ),
            &[
                (
                    "user =",
                    "\"",
                    "process.p.user",
                    Exact("unknown user \"no-such-user-fifod\""),
                ),
                (
                    "group =",
                    "\"",
                    "process.q.group",
                    Exact("unknown group \"no-such-group-fifod\""),
                ),
            ],
        ),
        // FIFOs and processes share one namespace.
        invalid(
            "a process named like a FIFO",
            with_dir("[fifo.a]\n[process.a]\ncommand = [\"cat\"]\n"),
            &[(
                "[process.a]",
                "a]",
                "process.a",
                Exact("the name is already used by a [fifo.*] table"),
            )],
        ),
        invalid(
            "a FIFO named like a process",
            with_dir("[process.b]\ncommand = [\"cat\"]\n[fifo.b]\n"),
            &[(
                "[fifo.b]",
                "b]",
                "fifo.b",
                Exact("the name is already used by a [process.*] table"),
            )],
        ),
        // Empty commands.
        invalid(
            "a command without a program",
            with_dir("[process.p]\ncommand = []\n[process.q]\ncommand = [\"\", \"x\"]\n"),
            &[
                ("[]", "[", "process.p.command", Exact("must name a program")),
                (
                    "\"x\"",
                    "\"\"",
                    "process.q.command",
                    Exact("must name a program"),
                ),
            ],
        ),
        // NUL, written as the escape \u0000, wherever a string goes.
        invalid(
            "NUL in dir and control",
            "[daemon]\ndir = \"{RUN}\\u0000\"\ncontrol = \"c\\u0000.sock\"\n".to_string(),
            &[
                ("dir =", "\"", "daemon.dir", NO_NUL),
                ("control", "\"", "daemon.control", NO_NUL),
            ],
        ),
        invalid(
            "NUL in a FIFO's name, path, owner and group",
            with_dir(
                "[fifo.\"in\\u0000\"]\n\
                 [fifo.out]\npath = \"out\\u0000\"\nowner = \"root\\u0000\"\ngroup = \"x\\u0000\"\n",
            ),
            &[
                (
                    "[fifo.\"in",
                    "\"",
                    "fifo.in\\0",
                    Exact("invalid name \"in\\0\": use letters, digits, '_' and '-'"),
                ),
                ("[fifo.\"in", "\"", "fifo.in\\0.path", NO_NUL),
                ("path", "\"", "fifo.out.path", NO_NUL),
                ("owner", "\"", "fifo.out.owner", NO_NUL),
                ("group", "\"", "fifo.out.group", NO_NUL),
            ],
        ),
        invalid(
            "NUL in a process's command, cwd, env and user",
            with_dir(
                "[process.p]\ncommand = [\"cat\", \"-\\u0000\"]\ncwd = \"/\\u0000\"\n\
                 [process.q]\ncommand = [\"cat\"]\nenv = { A = \"x\\u0000\" }\n\
                 [process.r]\ncommand = [\"cat\"]\nenv = { \"B\\u0000\" = \"y\" }\n\
                 [process.s]\ncommand = [\"cat\"]\nuser = \"root\\u0000\"\n",
            ),
            &[
                ("\"cat\", \"-", "\"-", "process.p.command", NO_NUL),
                ("cwd", "\"", "process.p.cwd", NO_NUL),
                (
                    "A =",
                    "{",
                    "process.q.env",
                    Exact("invalid variable \"A\": its value must not contain a NUL byte"),
                ),
                (
                    "\"B",
                    "{",
                    "process.r.env",
                    Exact(
                        "invalid variable \"B\\0\": a name must be non-empty, without '=' or a NUL byte",
                    ),
                ),
                ("user", "\"", "process.s.user", NO_NUL),
            ],
        ),
        invalid(
            "NUL in a route's endpoint",
            with_dir("[fifo.in]\n[fifo.out]\n[[route]]\nfrom = [\"in\\u0000\"]\nto = [\"out\"]\n"),
            &[(
                "from",
                "\"",
                "route[0].from",
                Exact("unknown endpoint \"in\\0\" (did you mean \"in\"?)"),
            )],
        ),
        // Echoed text cannot forge a line or reach the terminal raw.
        invalid(
            "a newline and an escape sequence in echoed text",
            "[daemon]\ndir = \"{RUN}\"\nlog_level = \"loud\\nfifod.toml:1:1: fake\"\n\
             [fifo.\"a\\u001b[31m\"]\npath = \"a\"\n"
                .to_string(),
            &[
                (
                    "log_level",
                    "\"",
                    "daemon.log_level",
                    Exact(
                        "invalid level \"loud\\nfifod.toml:1:1: fake\": expected off, error, warn, info, debug or trace",
                    ),
                ),
                (
                    "[fifo.",
                    "\"",
                    "fifo.a\\u{1b}[31m",
                    Exact("invalid name \"a\\u{1b}[31m\": use letters, digits, '_' and '-'"),
                ),
            ],
        ),
        // Files that are not a config.
        unreadable("a FIFO", Input::Fifo, "is a FIFO, not a regular file"),
        unreadable(
            "a directory",
            Input::Dir,
            "is a directory, not a regular file",
        ),
        unreadable(
            "a device",
            Input::Link("/dev/null"),
            "is a character device, not a regular file",
        ),
        unreadable(
            "no file",
            Input::Missing,
            "No such file or directory (os error 2)",
        ),
        unreadable(
            "a file over 1 MiB",
            Input::Bytes(padded("[fifo.in]\n", MAX_CONFIG_BYTES + 1)),
            "is 1048577 bytes; a config may be at most 1048576 bytes",
        ),
        valid(
            "a file of exactly 1 MiB",
            Input::Bytes(padded("[fifo.in]\n", MAX_CONFIG_BYTES)),
            &[
                "daemon: dir {RUN} (mode 0755), shutdown_timeout 5s, pipe_size auto",
                "fifo in: {RUN}/in (unrouted, mode 0600)",
            ],
        ),
        // A file that declares nothing (an empty one, most likely caught
        // half-written) is refused, at start as on reload.
        nothing_declared("an empty file", ""),
        nothing_declared("only comments and blank lines", "# nothing yet\n\n   \n"),
        nothing_declared(
            "only a [daemon] table",
            "[daemon]\nshutdown_timeout = \"1s\"\n",
        ),
    ];

    // Not UTF-8: located at the first byte that is not.
    let text = with_dir("[fifo.in]\npath = \"i?n\"\n");
    let expect = locate(
        &text,
        &[(
            "path",
            "?",
            "",
            Msg::Exact("invalid UTF-8 (byte 0xff): a config must be UTF-8 text"),
        )],
    );
    let bytes = text.bytes().map(|b| if b == b'?' { 0xff } else { b });
    rows.push(Row {
        what: "a byte that is not UTF-8",
        input: Input::Bytes(bytes.collect()),
        verdict: Verdict::Errors(expect),
    });

    // A BOM is not a column.
    rows.push(Row {
        what: "a byte order mark",
        input: Input::Text("\u{feff}colour = 1\n[daemon]\ndir = \"{RUN}\"\n".to_string()),
        verdict: Verdict::Errors(vec![Expect {
            line: 1,
            col: 1,
            key: "colour",
            msg: Msg::Starts("unknown key"),
        }]),
    });

    // Nesting deeper than the TOML parser's limit of 80: located where the
    // limit is passed.
    let depth = 200;
    let nested = [
        (
            "arrays nested 200 deep",
            "[".repeat(depth) + &"]".repeat(depth),
            1,
            "cannot recurse further",
        ),
        (
            "inline tables nested 200 deep",
            "{a=".repeat(depth) + "1" + &"}".repeat(depth),
            3,
            "cannot recurse further",
        ),
    ];
    for (what, value, width, message) in nested {
        let text = with_dir(&format!("[fifo.in]\nmode = {value}\n"));
        let (line, col) = at(&text, "mode =", "mode");
        rows.push(Row {
            what,
            input: Input::Text(text),
            verdict: Verdict::Errors(vec![Expect {
                line,
                col: col + "mode = ".len() + 80 * width,
                key: "",
                msg: Msg::Starts(message),
            }]),
        });
    }
    rows.push(invalid(
        "a key of 101 dotted parts",
        with_dir(&format!("  [fifo{}]\n", ".a".repeat(100))),
        &[("[fifo.a.a", "[", "", Msg::Exact("recursion limit"))],
    ));
    rows
}

/// `text`, then comment lines up to exactly `len` bytes.
fn padded(text: &str, len: usize) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    while bytes.len() < len {
        let room = len - bytes.len();
        let line = "#".repeat(room.min(80) - 1) + "\n";
        bytes.extend_from_slice(if room == 1 { b"\n" } else { line.as_bytes() });
    }
    bytes
}

fn verify(row: &Row) {
    let sb = Sandbox::new();
    let run_dir = sb.run_dir().display().to_string();
    let path = sb.config_path();
    match &row.input {
        Input::Text(text) => {
            sb.write_raw_config(text);
        }
        Input::Bytes(bytes) => {
            let mut out = Vec::with_capacity(bytes.len());
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                if let Some(after) = rest.strip_prefix(b"{RUN}") {
                    out.extend_from_slice(run_dir.as_bytes());
                    rest = after;
                } else {
                    out.push(rest[0]);
                    rest = &rest[1..];
                }
            }
            std::fs::write(&path, out).expect("write config");
        }
        Input::Fifo => nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo"),
        Input::Dir => std::fs::create_dir(&path).expect("mkdir"),
        Input::Link(to) => std::os::unix::fs::symlink(to, &path).expect("symlink"),
        Input::Missing => {}
    }
    // The default dir, for configs without one (and should a config
    // unexpectedly be valid, `run` stays inside the sandbox).
    let launch = Launch {
        env: vec![("RUNTIME_DIRECTORY".into(), sb.run_dir().into())],
        ..Launch::default()
    };
    let check = sb.run_to_exit(&["check", "--config", "fifod.toml"], &launch);
    assert!(!check.stderr.contains("panicked"), "{}", check.stderr);
    if let Verdict::Valid(lines) = &row.verdict {
        check.assert_code(0);
        let expected: Vec<String> = lines.iter().map(|l| l.replace("{RUN}", &run_dir)).collect();
        assert_eq!(check.stdout.lines().collect::<Vec<_>>(), expected);
        return;
    }
    let run = sb.run_to_exit(&["run", "--config", "fifod.toml"], &launch);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    match &row.verdict {
        Verdict::Errors(expected) => {
            check.assert_code(1);
            assert_errors_in(&check.stderr, "fifod.toml", expected, "check");
            run.assert_code(78);
            assert_errors_in(&run.stderr, "fifod.toml", expected, "run");
        }
        Verdict::Unreadable(reason) => {
            let line = format!("fifod.toml: cannot read config: {reason}");
            for (out, cmd) in [(&check, "check"), (&run, "run")] {
                out.assert_code(1);
                assert!(
                    out.stderr.lines().any(|l| l == line),
                    "{cmd}: missing {line:?} in:\n{}",
                    out.stderr
                );
            }
        }
        Verdict::Valid(_) => unreachable!(),
    }
    // Nothing made: no run dir, nothing in the sandbox but the config and
    // the commands' output.
    assert!(!sb.run_dir().exists(), "an invalid config created the dir");
    let made: Vec<String> = std::fs::read_dir(sb.root())
        .expect("read sandbox")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name != "fifod.toml" && !name.ends_with(".log"))
        .collect();
    assert!(made.is_empty(), "an invalid config made {made:?}");
}

/// Every row of the spec, each with a fresh sandbox; all rows run, and the
/// ones that fail are named at the end.
#[test]
fn every_kind_of_bad_input() {
    let mut failed = Vec::new();
    for row in rows() {
        if std::panic::catch_unwind(|| verify(&row)).is_err() {
            failed.push(row.what);
        }
    }
    assert!(
        failed.is_empty(),
        "rows that failed (see above): {failed:#?}"
    );
}
