use super::*;

fn env() -> Environment {
    Environment {
        runtime_directory: None,
        xdg_runtime_dir: Some("/run/user/1000".into()),
        is_root: false,
    }
}

fn errors(text: &str) -> Vec<String> {
    parse("f.toml", text, &env())
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn full_config_parses_to_the_expected_struct() {
    let text = r#"
[daemon]
dir = "/srv/fifo//x/"
dir_mode = "0750"
pipe_size = "1MiB"
shutdown_timeout = "2s"
log_level = "debug"

[fifo.in]
mode = "0620"
owner = 0
group = "0"

[fifo.out]
path = "sub/./out"

[fifo.spare]
path = "/elsewhere/spare"

[[route]]
from = ["in"]
to = ["out"]
buffer = "64KiB"
when_full = "drop-oldest"
"#;
    let config = parse("f.toml", text, &env()).unwrap();
    assert_eq!(
        config,
        Config {
            daemon: DaemonConfig {
                dir: "/srv/fifo/x".into(),
                dir_mode: Mode(0o750),
                pipe_size: Some(Size(1 << 20)),
                shutdown_timeout: Duration::from_secs(2),
                log_level: LevelFilter::Debug,
                control: Some("/srv/fifo/x/control.sock".into()),
                control_group: None,
            },
            fifos: vec![
                FifoConfig {
                    name: "in".into(),
                    path: "/srv/fifo/x/in".into(),
                    mode: Mode(0o620),
                    owner: Some(0),
                    group: Some(0),
                    role: Role::Input,
                },
                FifoConfig {
                    name: "out".into(),
                    path: "/srv/fifo/x/sub/out".into(),
                    mode: Mode(0o600),
                    owner: None,
                    group: None,
                    role: Role::Output,
                },
                FifoConfig {
                    name: "spare".into(),
                    path: "/elsewhere/spare".into(),
                    mode: Mode(0o600),
                    owner: None,
                    group: None,
                    role: Role::Unrouted,
                },
            ],
            processes: vec![],
            routes: vec![RouteConfig {
                name: "route[0]".into(),
                from: vec![SourceRef::Fifo("in".into())],
                to: vec![SinkRef::Fifo("out".into())],
                buffer: Size(65536),
                when_full: WhenFull::DropOldest,
                eof: Eof::Hold,
                framing: Framing::Bytes,
                max_line: Size(65536),
            }],
        }
    );
}

#[test]
fn defaults() {
    let config = parse(
        "f.toml",
        "[fifo.a]\n[fifo.b]\n[[route]]\nfrom=[\"a\"]\nto=[\"b\"]\n",
        &env(),
    )
    .unwrap();
    assert_eq!(config.daemon.dir, PathBuf::from("/run/user/1000/fifod"));
    assert_eq!(config.daemon.dir_mode, Mode(0o755));
    assert_eq!(config.daemon.pipe_size, None);
    assert_eq!(config.daemon.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(config.routes[0].buffer, Size(1 << 20));
    assert_eq!(config.routes[0].when_full, WhenFull::Block);
    let root = Environment {
        is_root: true,
        ..Environment::default()
    };
    let config = parse("f.toml", "[fifo.a]\n", &root).unwrap();
    assert_eq!(config.daemon.dir, PathBuf::from("/run/fifod"));
    let systemd = Environment {
        runtime_directory: Some("/run/fifod-x:/run/other".into()),
        ..root
    };
    let config = parse("f.toml", "[fifo.a]\n", &systemd).unwrap();
    assert_eq!(config.daemon.dir, PathBuf::from("/run/fifod-x"));
    let nothing = Environment::default();
    assert_eq!(
        parse("f.toml", "", &nothing).unwrap_err()[0].to_string(),
        "f.toml: daemon.dir: not set, and neither RUNTIME_DIRECTORY nor XDG_RUNTIME_DIR is set to give a default"
    );
}

#[test]
fn unknown_endpoint_with_suggestion() {
    let text = "[fifo.in]\n[fifo.out]\n\n[[route]]\nfrom = [\"in\"]\nto = [\"ouput\"]\n";
    assert_eq!(
        errors(text),
        ["f.toml:6:7: route[0].to: unknown endpoint \"ouput\" (did you mean \"out\"?)"]
    );
    let text = "[fifo.in]\n[[route]]\nfrom = [\"in\"]\nto = [\"zzzzzz\"]\n";
    assert_eq!(
        errors(text),
        ["f.toml:4:7: route[0].to: unknown endpoint \"zzzzzz\""]
    );
}

#[test]
fn every_error_is_reported_in_file_order() {
    let text = r#"[daemon]
dir_mode = "999"

[fifo.a]
mode = "rw"
colour = "blue"

[fifo.b]
owner = "no-such-user-fifod"

[[route]]
from = []
to = ["b", "a"]
when_full = "sometimes"
"#;
    assert_eq!(
        errors(text),
        [
            "f.toml:2:12: daemon.dir_mode: invalid mode \"999\": expected 3 octal digits, optionally after a 0, such as \"0640\"",
            "f.toml:6:1: fifo.a.colour: unknown key; expected one of path, mode, owner, group",
            "f.toml:9:9: fifo.b.owner: unknown user \"no-such-user-fifod\"",
            "f.toml:12:8: route[0].from: must name at least one endpoint",
            "f.toml:14:13: route[0].when_full: invalid value \"sometimes\": expected \"block\", \"drop-newest\" or \"drop-oldest\"",
        ]
    );
}

#[test]
fn both_input_and_output_is_reported_at_the_later_use() {
    let text = "[fifo.a]\n[fifo.b]\n[[route]]\nfrom = [\"a\"]\nto = [\"b\"]\n[[route]]\nfrom = [\"b\"]\nto = [\"a\"]\n";
    let errs = errors(text);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].starts_with(
        "f.toml:7:9: route[1].from: fifo \"b\" cannot be both an input and an output"
    ));
    assert!(errs[1].starts_with("f.toml:8:7: route[1].to: fifo \"a\" cannot be both"));
}

#[test]
fn duplicate_and_nested_paths() {
    let text = "[daemon]\ndir = \"/d\"\n[fifo.a]\npath = \"x/y\"\n[fifo.b]\npath = \"x/./y\"\n[fifo.c]\npath = \"/d/x/y/z\"\n[fifo.e]\npath = \"../e\"\n";
    assert_eq!(
        errors(text),
        [
            "f.toml:6:8: fifo.b.path: same path as fifo.a",
            "f.toml:8:8: fifo.c.path: is inside fifo.a, which is a FIFO",
            "f.toml:10:8: fifo.e.path: \"../e\" must not contain \"..\"",
        ]
    );
}

#[test]
fn syntax_and_type_errors() {
    assert_eq!(errors("[fifo.a\n"), errors("[fifo.a\n"));
    let errs = errors("[fifo.a]\nmode = \n");
    assert!(errs[0].starts_with("f.toml:2:"), "{errs:?}");
    assert_eq!(
        errors("[fifo.a]\nmode = 640\n"),
        ["f.toml:2:8: fifo.a.mode: invalid type: integer `640`, expected a string"]
    );
    assert_eq!(
        errors("[[route]]\nto = [\"x\"]\n"),
        ["f.toml:1:1: route[0].from: missing (required)"]
    );
    assert_eq!(
        errors("colour = 1\n"),
        [
            "f.toml:1:1: colour: unknown key; the top level has [daemon], [fifo.NAME], [process.NAME] and [[route]]"
        ]
    );
}

#[test]
fn names_and_ranges() {
    let errs = errors(
        "[fifo.stdin]\n[fifo.\"a b\"]\n[[route]]\nfrom=[\"x\"]\nto=[\"y\"]\nbuffer=\"1KiB\"\n",
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("f.toml:1:7: fifo.stdin: \"stdin\" is a reserved")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("f.toml:2:7: fifo.a b: invalid name")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("f.toml:6:8: route[0].buffer: 1KiB is out of range")),
        "{errs:?}"
    );
}

/// Mutated configs (bytes flipped, cut, repeated, nested deeply) must give
/// diagnostics or a config, never a panic.
#[test]
fn mangled_configs_never_panic() {
    let seeds = [
        include_str!("../../config/example.toml"),
        "[daemon]\ndir = \"/d\"\n[fifo.a]\n[process.p]\ncommand = [\"cat\"]\n[[route]]\nfrom = [\"a\"]\nto = [\"p\"]\nframing = \"lines\"\n",
    ];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n.max(1) as u64) as usize
    };
    let alphabet = b"[]{}=\"'.,\n #abcdefz019-_\\\0\xff";
    for round in 0..3000 {
        let seed = seeds[round % seeds.len()].as_bytes();
        let mut bytes = seed.to_vec();
        for _ in 0..=next(8) {
            let at = next(bytes.len() + 1);
            match next(4) {
                0 if !bytes.is_empty() => {
                    bytes.remove(at.min(bytes.len() - 1));
                }
                1 => bytes.insert(at, alphabet[next(alphabet.len())]),
                2 => {
                    let end = (at + next(40)).min(bytes.len());
                    let piece = bytes[at..end].to_vec();
                    bytes.splice(at..at, piece);
                }
                _ => bytes.truncate(at),
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse("f.toml", &text, &env());
    }
    let deep = format!("a = {}{}", "[".repeat(5000), "]".repeat(5000));
    assert!(parse("f.toml", &deep, &env()).is_err());
    let wide = "[fifo.x]\n".to_string() + &"# comment\n".repeat(50_000);
    assert!(parse("f.toml", &wide, &env()).is_ok());
}

#[test]
fn only_a_bounded_regular_file_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("config.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    // A FIFO with no writer would block a plain read forever.
    let err = load(&fifo, &env()).unwrap_err().to_string();
    assert!(
        err.ends_with("cannot read config: is a FIFO, not a regular file"),
        "{err}"
    );
    let err = load(dir.path(), &env()).unwrap_err().to_string();
    assert!(err.ends_with("is a directory, not a regular file"), "{err}");
    let big = dir.path().join("big.toml");
    std::fs::write(&big, vec![b'#'; MAX_CONFIG_BYTES as usize + 1]).unwrap();
    let err = load(&big, &env()).unwrap_err().to_string();
    assert!(
        err.contains("a config may be at most 1048576 bytes"),
        "{err}"
    );
}

#[test]
fn the_control_socket_is_located_from_the_daemon_table_alone() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.toml");
    let locate = |text: &str| {
        std::fs::write(&file, text).unwrap();
        locate_control(&file, &env())
    };
    // Mistakes elsewhere, syntax included, do not hide it.
    let daemon = "[daemon]\ndir = \"/d\"\ncontrol = \"s/c.sock\"\n";
    for rest in [
        "[fifo.in]\nmode = \"999\"\n",
        "[fifo.in\n",
        "[[route]]\nfrom = [\"a\"\n",
    ] {
        let text = format!("{daemon}{rest}");
        assert_eq!(
            locate(&text),
            Some(PathBuf::from("/d/s/c.sock")),
            "{text:?}"
        );
        assert!(load(&file, &env()).is_err(), "{text:?} is valid");
    }
    // The defaults without a [daemon] table.
    assert_eq!(
        locate("[fifo.in]\nmode = \"999\"\n"),
        Some(PathBuf::from("/run/user/1000/fifod/control.sock"))
    );
    // Nothing when the table itself is wrong, or turns the socket off.
    assert_eq!(locate("[daemon]\ndir = \"relative\"\n"), None);
    assert_eq!(locate("[daemon]\ndir = \"/d\"\nsocket = \"x\"\n"), None);
    assert_eq!(locate("[daemon]\ndir = \"/d\"\ncontrol = \"\"\n"), None);
    assert_eq!(
        locate_control(&dir.path().join("missing.toml"), &env()),
        None
    );
}

#[test]
fn the_control_socket_lives_inside_dir() {
    let text = "[daemon]\ndir = \"/d\"\ncontrol = \"/tmp/elsewhere.sock\"\n";
    assert_eq!(
        errors(text),
        [
            "f.toml:3:11: daemon.control: must be a path inside dir, relative to it (such as \"control.sock\")"
        ]
    );
    let config = parse(
        "f.toml",
        "[daemon]\ndir = \"/d\"\ncontrol = \"sub/c.sock\"\n[fifo.a]\n",
        &env(),
    )
    .unwrap();
    assert_eq!(config.daemon.control, Some(PathBuf::from("/d/sub/c.sock")));
    let off = parse(
        "f.toml",
        "[daemon]\ndir = \"/d\"\ncontrol = \"\"\n[fifo.a]\n",
        &env(),
    )
    .unwrap();
    assert_eq!(off.daemon.control, None);
}

#[test]
fn process_identity_is_looked_up_and_needs_root() {
    let text = r#"
[fifo.out]
[process.p]
command = ["/bin/true"]
user = "nobody"
[process.q]
command = ["/bin/true"]
user = "no-such-user-fifod"
[[route]]
from = ["p", "q"]
to = ["out"]
"#;
    let found = errors(text);
    assert!(
        found
            .iter()
            .any(|e| e.contains("process.p.user") && e.contains("only root")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|e| e.contains("process.q.user") && e.contains("unknown user")),
        "{found:?}"
    );
    let root = Environment {
        is_root: true,
        ..env()
    };
    let text = text.replace("user = \"no-such-user-fifod\"", "group = 0");
    let config = parse("f.toml", &text, &root).expect("valid for root");
    let nobody = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .expect("user nobody exists");
    assert_eq!(config.processes[0].user, Some(nobody.uid.as_raw()));
    assert_eq!(config.processes[0].group, Some(nobody.gid.as_raw()));
    assert_eq!(config.processes[1].user, None);
    assert_eq!(config.processes[1].group, Some(0));
}

/// Property tests: whatever the input, `parse_bytes` gives a config or
/// diagnostics that each have a place in the text, a message, and a key
/// unless the text is not TOML at all. Complements
/// `mangled_configs_never_panic` (fixed byte edits, only "no panic"): here
/// the inputs come from three generators (raw input, text built from the
/// config's own grammar, line edits of full configs), every diagnostic is
/// checked, and a failure shrinks to a small input, saved in
/// proptest-regressions/config/tests.txt.
mod properties {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::{Index, select};

    /// A few seconds in a debug build; `PROPTEST_CASES=N` runs more.
    const CASES: u32 = 500;

    fn config() -> ProptestConfig {
        let default = ProptestConfig::default();
        let explicit = std::env::var_os("PROPTEST_CASES").is_some();
        ProptestConfig {
            cases: if explicit { default.cases } else { CASES },
            ..default
        }
    }

    /// What every outcome must satisfy.
    fn check_outcome(bytes: &[u8], root: bool) -> Result<(), TestCaseError> {
        let env = Environment {
            is_root: root,
            ..env()
        };
        let diagnostics = match parse_bytes("f.toml", bytes, &env) {
            Ok(config) => {
                config.summary();
                return Ok(());
            }
            Err(diagnostics) => diagnostics,
        };
        prop_assert!(!diagnostics.is_empty(), "an error without diagnostics");
        let text = String::from_utf8_lossy(bytes);
        let lines: Vec<&str> = text.split('\n').collect();
        let is_toml = std::str::from_utf8(bytes)
            .is_ok_and(|text| DeTable::parse_recoverable(text).1.is_empty());
        let mut previous = (1, 1);
        for d in &diagnostics {
            let shown = d.to_string();
            let (line, col) = d
                .position
                .ok_or_else(|| TestCaseError::fail(format!("unlocated: {shown:?}")))?;
            prop_assert!(
                (1..=lines.len()).contains(&line),
                "line past the end: {shown:?}"
            );
            let width = lines[line - 1]
                .trim_start_matches('\u{feff}')
                .chars()
                .count();
            prop_assert!(
                (1..=width + 1).contains(&col),
                "column past the end: {shown:?}"
            );
            prop_assert!((line, col) >= previous, "not in file order: {shown:?}");
            previous = (line, col);
            prop_assert_eq!(&d.file, "f.toml");
            prop_assert!(!d.message.trim().is_empty(), "no message: {shown:?}");
            prop_assert!(
                !d.key.is_empty() || !is_toml,
                "no key in a TOML file: {shown:?}"
            );
            prop_assert!(
                !shown.contains(char::is_control),
                "not one printable line: {shown:?}"
            );
            let prefix = format!("f.toml:{line}:{col}: ");
            prop_assert!(shown.starts_with(&prefix), "{shown:?}");
        }
        Ok(())
    }

    /// TOML's own punctuation and words, so that more input gets past the
    /// lexer than with random bytes.
    const TOKENS: &[&str] = &[
        "[",
        "]",
        "[[",
        "]]",
        "{",
        "}",
        "=",
        ",",
        ".",
        "\"",
        "'",
        "\"\"\"",
        "'''",
        "\n",
        "\r\n",
        "\r",
        " ",
        "\t",
        "#",
        "\\",
        "\\u0000",
        "\\n",
        "\0",
        "\u{feff}",
        "é",
        "a",
        "fifo",
        "daemon",
        "process",
        "route",
        "from",
        "to",
        "mode",
        "1",
        "-",
        "+",
        "0x1f",
        "1e3",
        "inf",
        "nan",
        "true",
        "1979-05-27",
        "T07:32:00Z",
    ];

    fn raw_input() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            any::<String>().prop_map(String::into_bytes),
            prop::collection::vec(select(TOKENS), 0..64).prop_map(|t| t.concat().into_bytes()),
        ]
    }

    /// Endpoint names: ones that meet, and ones that are wrong.
    fn name() -> BoxedStrategy<String> {
        prop_oneof![
            6 => select(&["in", "out", "a", "p", "q"][..]).prop_map(String::from),
            2 => select(
                &[
                    "stdin", "stdout", "p.stderr", "a b", "", "é", "in\0", "x\ny", "\u{1b}[31m",
                ][..]
            )
            .prop_map(String::from),
            1 => "[a-z][a-z0-9_-]{0,6}",
        ]
        .boxed()
    }

    const DAEMON_KEYS: &[&str] = &[
        "dir",
        "dir_mode",
        "pipe_size",
        "shutdown_timeout",
        "log_level",
        "control",
    ];
    const FIFO_KEYS: &[&str] = &["path", "mode", "owner", "group"];
    const PROCESS_KEYS: &[&str] = &[
        "command",
        "cwd",
        "env",
        "stderr",
        "restart",
        "restart_delay",
        "user",
        "group",
    ];
    const ROUTE_KEYS: &[&str] = &[
        "from",
        "to",
        "buffer",
        "when_full",
        "eof",
        "framing",
        "max_line",
    ];
    const OTHER_KEYS: &[&str] = &["colour", "ouput", "", "fifo", "route", "a.b", "dir", "from"];

    /// What the values of the known keys look like, right and wrong.
    const WORDS: &[&str] = &[
        "4KiB",
        "1MiB",
        "1GiB",
        "2GiB",
        "0",
        "4095",
        "12XB",
        " 64 KiB ",
        "-1",
        "99999999999999999999",
        "18014398509481984GiB",
        "0640",
        "640",
        "999",
        "0o7777",
        "0777",
        "1777",
        "rw",
        "5s",
        "0ms",
        "60m",
        "61m",
        "-1s",
        "1h",
        "18446744073709551615m",
        "info",
        "loud",
        "block",
        "drop-newest",
        "drop-oldest",
        "drop-random",
        "merge",
        "separate",
        "log",
        "null",
        "inherit",
        "never",
        "always",
        "sometimes",
        "hold",
        "forward",
        "lines",
        "bytes",
        "/d",
        "/tmp/x",
        "sub/./x",
        "../x",
        "a//b",
        "/",
        "control.sock",
        "",
        "root",
        "nobody",
        "no-such-user-fifod",
        "cat",
        "/bin/true",
        "no-such-program-fifod",
        "x\0y",
        "a\nb",
    ];

    /// A TOML basic string, with escapes for what must be escaped.
    fn quoted(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    /// A key, bare when TOML allows it.
    fn key(s: &str) -> String {
        let bare = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if bare { s.to_string() } else { quoted(s) }
    }

    fn word() -> BoxedStrategy<String> {
        prop_oneof![
            6 => select(WORDS).prop_map(String::from),
            2 => name(),
            1 => "\\PC{0,8}",
            1 => Just("x".repeat(300)),
        ]
        .boxed()
    }

    fn array(items: BoxedStrategy<String>) -> BoxedStrategy<String> {
        prop::collection::vec(items, 0..4)
            .prop_map(|items| format!("[{}]", items.join(", ")))
            .boxed()
    }

    /// Any TOML value, and some that are not.
    fn value() -> BoxedStrategy<String> {
        let leaf = prop_oneof![
            8 => word().prop_map(|w| quoted(&w)),
            1 => any::<i64>().prop_map(|n| n.to_string()),
            1 => Just("4294967296".to_string()),
            1 => any::<bool>().prop_map(|b| b.to_string()),
            1 => Just("1.5".to_string()),
            1 => Just("1979-05-27T07:32:00Z".to_string()),
            1 => Just("'lit\\eral'".to_string()),
            1 => "[ -~]{0,12}", // unquoted: mostly not TOML
            1 => (1usize..300).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
            1 => (1usize..300).prop_map(|n| format!("{}1{}", "{a=".repeat(n), "}".repeat(n))),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                array(inner.clone().boxed()),
                prop::collection::btree_map(word(), inner, 0..3).prop_map(|pairs| {
                    let pairs: Vec<String> = pairs
                        .iter()
                        .map(|(k, v)| format!("{} = {v}", key(k)))
                        .collect();
                    format!("{{ {} }}", pairs.join(", "))
                }),
            ]
        })
        .boxed()
    }

    /// A value of the type `name` takes, mostly.
    fn value_for(name: &str) -> BoxedStrategy<String> {
        let typed = match name {
            "command" => array(word().prop_map(|w| quoted(&w)).boxed()),
            "from" | "to" => array(name_value()),
            "env" => prop::collection::btree_map(word(), word(), 0..3)
                .prop_map(|vars| {
                    let vars: Vec<String> = vars
                        .iter()
                        .map(|(k, v)| format!("{} = {}", key(k), quoted(v)))
                        .collect();
                    format!("{{ {} }}", vars.join(", "))
                })
                .boxed(),
            "owner" | "group" | "user" => prop_oneof![
                any::<u32>().prop_map(|n| n.to_string()),
                word().prop_map(|w| quoted(&w)),
            ]
            .boxed(),
            _ => word().prop_map(|w| quoted(&w)).boxed(),
        };
        prop_oneof![4 => typed, 1 => value()].boxed()
    }

    fn name_value() -> BoxedStrategy<String> {
        name().prop_map(|n| quoted(&n)).boxed()
    }

    /// `key = value` lines for a table whose keys are `known`, plus some
    /// that are not; a key given twice is a TOML error, so mostly not. The
    /// required keys come first, mostly, so that the table gets past serde.
    fn entries(known: &'static [&'static str]) -> BoxedStrategy<String> {
        let key_name = prop_oneof![
            8 => select(known),
            1 => select(OTHER_KEYS),
            1 => select(&["env.PATH", "command.0", "a.b.c"][..]),
        ];
        let entry = key_name.prop_flat_map(|k| {
            let shown = if k.contains('.') {
                k.to_string()
            } else {
                key(k)
            };
            (Just(shown), value_for(k))
        });
        let required: Vec<BoxedStrategy<(String, String)>> = known
            .iter()
            .filter(|k| ["command", "from", "to"].contains(k))
            .map(|&k| (Just(k.to_string()), value_for(k)).boxed())
            .collect();
        (
            required,
            prop::bool::weighted(0.8),
            prop::collection::vec(entry, 0..6),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(required, with_required, rest, repeat_keys)| {
                let mut entries = if with_required { required } else { Vec::new() };
                entries.extend(rest);
                if !repeat_keys {
                    let mut seen = HashSet::new();
                    entries.retain(|(k, _)| seen.insert(k.clone()));
                }
                let lines: Vec<String> =
                    entries.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                lines.join("\n")
            })
            .boxed()
    }

    fn section() -> BoxedStrategy<String> {
        let all: &'static [&'static str] = OTHER_KEYS;
        prop_oneof![
            3 => Just(("[daemon]".to_string(), DAEMON_KEYS)),
            4 => name().prop_map(|n| (format!("[fifo.{}]", key(&n)), FIFO_KEYS)),
            3 => name().prop_map(|n| (format!("[process.{}]", key(&n)), PROCESS_KEYS)),
            4 => Just(("[[route]]".to_string(), ROUTE_KEYS)),
            1 => Just((String::new(), all)),
            1 => name().prop_map(move |n| (format!("[{}]", key(&n)), all)),
            1 => name().prop_map(|n| (format!("[[fifo.{}]]", key(&n)), FIFO_KEYS)),
            1 => select(&["[fifo]", "[route]", "[process]", "[daemon.x]", "[[daemon]]"][..])
                .prop_map(move |h| (h.to_string(), all)),
            1 => (1usize..120).prop_map(|n| (format!("[fifo{}]", ".a".repeat(n)), FIFO_KEYS)),
        ]
        .prop_flat_map(|(header, known)| (Just(header), entries(known)))
        .prop_map(|(header, entries)| format!("{header}\n{entries}\n"))
        .boxed()
    }

    /// Tables and keys of fifod's config, in any order, with values of the
    /// right type or not. A table given twice is a TOML error, so mostly not.
    fn document() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(section(), 0..7),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(mut sections, repeat_tables)| {
                if !repeat_tables {
                    let mut seen = HashSet::new();
                    sections.retain(|s| {
                        let header = s.lines().next().unwrap_or("");
                        header == "[[route]]"
                            || header.is_empty()
                            || seen.insert(header.to_string())
                    });
                }
                sections.concat()
            })
    }

    /// An edit may insert a table header or a line of any table.
    fn line() -> BoxedStrategy<String> {
        prop_oneof![
            section().prop_map(|s| s.lines().next().unwrap_or("").to_string()),
            select(&[DAEMON_KEYS, FIFO_KEYS, PROCESS_KEYS, ROUTE_KEYS, OTHER_KEYS][..])
                .prop_flat_map(entries)
                .prop_map(|e| e.lines().next().unwrap_or("").to_string()),
        ]
        .boxed()
    }

    /// Every key of every table, valid for root.
    const FULL: &str = r#"[daemon]
dir = "/run/fifod-test"
dir_mode = "0750"
pipe_size = "1MiB"
shutdown_timeout = "2s"
log_level = "debug"
control = "control.sock"

[fifo.in]
path = "sub/in"
mode = "0620"
owner = 0
group = "root"

[fifo.out]
mode = "0640"

[process.p]
command = ["cat", "-u"]
cwd = "/"
env = { LANG = "C.UTF-8" }
stderr = "separate"
restart = "always"
restart_delay = "100ms"
user = 0
group = 0

[[route]]
from = ["in", "p.stderr"]
to = ["p"]
buffer = "64KiB"
when_full = "drop-oldest"
eof = "forward"
framing = "lines"
max_line = "4KiB"

[[route]]
from = ["p"]
to = ["out", "stdout"]
"#;

    const SEEDS: &[&str] = &[include_str!("../../config/example.toml"), FULL];

    #[derive(Debug, Clone)]
    enum Edit {
        Delete(Index),
        Duplicate(Index),
        Swap(Index, Index),
        FlipBit(Index, Index, u8),
        Insert(Index, String),
        Truncate(Index),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        let at = || any::<Index>();
        prop_oneof![
            3 => at().prop_map(Edit::Delete),
            2 => at().prop_map(Edit::Duplicate),
            2 => (at(), at()).prop_map(|(a, b)| Edit::Swap(a, b)),
            3 => (at(), at(), 0u8..8).prop_map(|(l, b, bit)| Edit::FlipBit(l, b, bit)),
            2 => (at(), line()).prop_map(|(l, s)| Edit::Insert(l, s)),
            1 => at().prop_map(Edit::Truncate),
        ]
    }

    /// Applies line edits (and bit flips, which may leave the text not
    /// UTF-8) to a seed.
    fn edited(seed: &str, edits: &[Edit]) -> Vec<u8> {
        let mut lines: Vec<Vec<u8>> = seed
            .split_inclusive('\n')
            .map(|l| l.as_bytes().to_vec())
            .collect();
        for edit in edits {
            if lines.is_empty() {
                break;
            }
            let n = lines.len();
            match edit {
                Edit::Delete(i) => {
                    lines.remove(i.index(n));
                }
                Edit::Duplicate(i) => {
                    let copy = lines[i.index(n)].clone();
                    lines.insert(i.index(n), copy);
                }
                Edit::Swap(a, b) => lines.swap(a.index(n), b.index(n)),
                Edit::FlipBit(i, at, bit) => {
                    let line = &mut lines[i.index(n)];
                    if !line.is_empty() {
                        let at = at.index(line.len());
                        line[at] ^= 1 << bit;
                    }
                }
                Edit::Insert(i, text) => lines.insert(i.index(n), format!("{text}\n").into_bytes()),
                Edit::Truncate(i) => lines.truncate(i.index(n)),
            }
        }
        lines.concat()
    }

    #[test]
    fn the_seeds_are_valid() {
        let root = Environment {
            is_root: true,
            ..env()
        };
        for seed in SEEDS {
            if let Err(errors) = parse("f.toml", seed, &root) {
                panic!("{errors:?}");
            }
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn raw_input_gives_a_config_or_located_errors(
            bytes in raw_input(),
            root in any::<bool>(),
        ) {
            check_outcome(&bytes, root)?;
        }

        #[test]
        fn config_shaped_input_gives_a_config_or_located_errors(
            text in document(),
            root in any::<bool>(),
        ) {
            check_outcome(text.as_bytes(), root)?;
        }

        #[test]
        fn edited_configs_give_a_config_or_located_errors(
            seed in 0..SEEDS.len(),
            edits in prop::collection::vec(edit(), 1..6),
            root in any::<bool>(),
        ) {
            check_outcome(&edited(SEEDS[seed], &edits), root)?;
        }
    }
}

#[test]
fn a_config_that_declares_nothing_is_refused() {
    assert_eq!(
        errors("[daemon]\ndir = \"/d\"\n"),
        [
            "f.toml:1:1: fifo: the config declares no FIFO and no process: there is nothing for \
          fifod to do (an empty or truncated file?)"
        ]
    );
    assert_eq!(errors("").len(), 1);
}
