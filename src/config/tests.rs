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
    let config = parse("f.toml", "", &root).unwrap();
    assert_eq!(config.daemon.dir, PathBuf::from("/run/fifod"));
    let systemd = Environment {
        runtime_directory: Some("/run/fifod-x:/run/other".into()),
        ..root
    };
    let config = parse("f.toml", "", &systemd).unwrap();
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
        "[daemon]\ndir = \"/d\"\ncontrol = \"sub/c.sock\"\n",
        &env(),
    )
    .unwrap();
    assert_eq!(config.daemon.control, Some(PathBuf::from("/d/sub/c.sock")));
    let off = parse("f.toml", "[daemon]\ndir = \"/d\"\ncontrol = \"\"\n", &env()).unwrap();
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
