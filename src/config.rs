//! The config file: parse, validate, and locate every error.
//!
//! Loading is two passes. The first deserializes each table on its own (so a
//! mistake in one `[fifo.x]` does not hide a mistake in the next); the second
//! checks what serde cannot: names, paths, roles, users. Every error carries
//! the byte span it came from and is rendered as `file:line:col: key: message`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use log::LevelFilter;
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::units::{Mode, Size, parse_duration};

/// A config larger than this is refused before it is parsed.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// The lock file fifod keeps in `dir`.
pub const LOCK_FILE_NAME: &str = ".fifod.lock";

const MIN_BUFFER: u64 = 4096;
const DEFAULT_CONTROL: &str = "control.sock";
/// sun_path holds 108 bytes with the terminating NUL.
const SOCKET_NAME_MAX: usize = 108;
const DEFAULT_MAX_LINE: Size = Size(64 * 1024);
const MAX_BUFFER: u64 = 1 << 30;
const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3600);
const PATH_MAX: usize = 4095;
const NAME_MAX: usize = 255;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub daemon: DaemonConfig,
    /// In the order the file lists them.
    pub fifos: Vec<FifoConfig>,
    pub processes: Vec<ProcessConfig>,
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    pub dir: PathBuf,
    pub dir_mode: Mode,
    pub pipe_size: Option<Size>,
    pub shutdown_timeout: Duration,
    pub log_level: LevelFilter,
    /// The control socket `fifod status` talks to; `None` when disabled.
    pub control: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FifoConfig {
    pub name: String,
    /// Absolute and normalised: no `.`, `..` or repeated slashes.
    pub path: PathBuf,
    pub mode: Mode,
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub role: Role,
}

/// Which way bytes cross a FIFO, from fifod's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Written by others, read by fifod (named in a `from`).
    Input,
    /// Written by fifod, read by others (named in a `to`).
    Output,
    /// In no route: created and held open, never read or written by fifod.
    Unrouted,
}

/// A program fifod runs, with anonymous pipes on its standard streams.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessConfig {
    pub name: String,
    /// argv; `command[0]` is looked up on `PATH` unless it contains a `/`.
    pub command: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// Added to the inherited environment.
    pub env: Vec<(String, String)>,
    pub stderr: StderrMode,
    pub restart: Restart,
    pub restart_delay: Duration,
}

/// Where a process's standard error goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StderrMode {
    /// The same pipe as stdout, so the two keep the order they were written in.
    Merge,
    /// Its own source, named `NAME.stderr` in routes.
    Separate,
    /// Each line is logged by fifod at warn level.
    Log,
    Null,
    /// fifod's own standard error.
    Inherit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    Never,
    /// After a non-zero exit or a signal.
    OnFailure,
    Always,
}

/// Whether a route passes on the end of its sources' sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eof {
    /// Sinks stay open; the ends of writers are not passed on.
    Hold,
    /// When every source has ended, every sink gets an end after the last byte.
    Forward,
}

/// Where a route takes bytes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SourceRef {
    Fifo(String),
    /// A process's stdout (and stderr when merged).
    Process(String),
    /// A process's stderr, with `stderr = "separate"`.
    Stderr(String),
    /// fifod's own standard input.
    Stdin,
}

/// Where a route puts bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SinkRef {
    Fifo(String),
    /// A process's stdin.
    Process(String),
    /// fifod's own standard output.
    Stdout,
}

impl fmt::Display for SourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceRef::Fifo(name) | SourceRef::Process(name) => f.write_str(name),
            SourceRef::Stderr(name) => write!(f, "{name}.stderr"),
            SourceRef::Stdin => f.write_str("stdin"),
        }
    }
}

impl fmt::Display for SinkRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkRef::Fifo(name) | SinkRef::Process(name) => f.write_str(name),
            SinkRef::Stdout => f.write_str("stdout"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    pub from: Vec<SourceRef>,
    pub to: Vec<SinkRef>,
    pub buffer: Size,
    pub when_full: WhenFull,
    pub eof: Eof,
    pub framing: Framing,
    /// With line framing, longer lines are passed on in pieces of this size.
    pub max_line: Size,
}

/// How a route cuts what it relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Bytes as they come; they are not inspected.
    Bytes,
    /// Whole lines: lines from different sources never interleave.
    Lines,
}

/// What a route does when a sink's buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Stop reading the sources until the sink catches up.
    Block,
    /// Drop the bytes that do not fit.
    DropNewest,
    /// Drop the oldest held bytes to make room.
    DropOldest,
}

impl WhenFull {
    fn parse(text: &str) -> Result<WhenFull, String> {
        match text {
            "block" => Ok(WhenFull::Block),
            "drop-newest" => Ok(WhenFull::DropNewest),
            "drop-oldest" => Ok(WhenFull::DropOldest),
            _ => Err(format!(
                "invalid policy \"{text}\": expected \"block\", \"drop-newest\" or \"drop-oldest\""
            )),
        }
    }
}

impl fmt::Display for WhenFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WhenFull::Block => "block",
            WhenFull::DropNewest => "drop-newest",
            WhenFull::DropOldest => "drop-oldest",
        })
    }
}

/// What the defaults depend on, so that tests can pin it.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub runtime_directory: Option<String>,
    pub xdg_runtime_dir: Option<String>,
    pub is_root: bool,
}

impl Environment {
    pub fn from_process() -> Environment {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        Environment {
            runtime_directory: var("RUNTIME_DIRECTORY"),
            xdg_runtime_dir: var("XDG_RUNTIME_DIR"),
            is_root: nix::unistd::geteuid().is_root(),
        }
    }

    fn default_dir(&self) -> Result<PathBuf, String> {
        if let Some(dirs) = &self.runtime_directory {
            // systemd joins several RuntimeDirectory= entries with ':'.
            let first = dirs.split(':').next().unwrap_or(dirs);
            return Ok(PathBuf::from(first));
        }
        if self.is_root {
            return Ok(PathBuf::from("/run/fifod"));
        }
        match &self.xdg_runtime_dir {
            Some(xdg) => Ok(Path::new(xdg).join("fifod")),
            None => Err(
                "not set, and neither RUNTIME_DIRECTORY nor XDG_RUNTIME_DIR is set to \
                         give a default"
                    .to_string(),
            ),
        }
    }
}

/// One located problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based; `None` when the problem has no place in the file.
    pub position: Option<(usize, usize)>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.file)?;
        if let Some((line, col)) = self.position {
            write!(f, "{line}:{col}:")?;
        }
        if !self.key.is_empty() {
            write!(f, " {}:", self.key)?;
        }
        write!(f, " {}", self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// The file could not be read at all.
    Unreadable { path: PathBuf, reason: String },
    /// The file was read and is wrong; every problem found, in file order.
    Invalid(Vec<Diagnostic>),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Unreadable { path, reason } => {
                write!(f, "{}: cannot read config: {reason}", path.display())
            }
            LoadError::Invalid(diagnostics) => {
                for (i, d) in diagnostics.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{d}")?;
                }
                Ok(())
            }
        }
    }
}

/// Reads and validates the config at `path`. Touches nothing but the file
/// itself and the user and group databases.
pub fn load(path: &Path, env: &Environment) -> Result<Config, LoadError> {
    let text = read_bounded(path).map_err(|reason| LoadError::Unreadable {
        path: path.to_owned(),
        reason,
    })?;
    parse(&path.display().to_string(), &text, env).map_err(LoadError::Invalid)
}

/// Only a regular file of bounded size is read: a FIFO or a device given as
/// the config must not hang or exhaust the daemon.
fn read_bounded(path: &Path) -> Result<String, String> {
    let mut file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        let kind = describe_file_type(&meta.file_type());
        return Err(format!("is a {kind}, not a regular file"));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(format!(
            "is {} bytes; a config may be at most {MAX_CONFIG_BYTES} bytes",
            meta.len()
        ));
    }
    let mut bytes = Vec::new();
    file.by_ref()
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|e| format!("is not UTF-8 ({e})"))
}

fn describe_file_type(ft: &std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    dir: Option<Spanned<String>>,
    dir_mode: Option<Spanned<String>>,
    pipe_size: Option<Spanned<String>>,
    shutdown_timeout: Option<Spanned<String>>,
    log_level: Option<Spanned<String>>,
    control: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFifo {
    path: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    owner: Option<Spanned<IdSpec>>,
    group: Option<Spanned<IdSpec>>,
}

/// A user or group, by name or by number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum IdSpec {
    Number(u32),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    from: Spanned<Vec<Spanned<String>>>,
    to: Spanned<Vec<Spanned<String>>>,
    buffer: Option<Spanned<String>>,
    when_full: Option<Spanned<String>>,
    eof: Option<Spanned<String>>,
    framing: Option<Spanned<String>>,
    max_line: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    command: Spanned<Vec<Spanned<String>>>,
    cwd: Option<Spanned<String>>,
    env: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    stderr: Option<Spanned<String>>,
    restart: Option<Spanned<String>>,
    restart_delay: Option<Spanned<String>>,
}

/// Errors gathered while loading, still as byte spans.
#[derive(Default)]
struct Problems(Vec<(Option<Range<usize>>, String, String)>);

impl Problems {
    fn add(
        &mut self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.0.push((span, key.into(), message.into()));
    }

    fn at<T>(&mut self, value: &Spanned<T>, key: impl Into<String>, message: impl Into<String>) {
        self.add(Some(value.span()), key, message);
    }

    fn into_diagnostics(self, file: &str, text: &str) -> Vec<Diagnostic> {
        let mut out: Vec<(usize, Diagnostic)> = self
            .0
            .into_iter()
            .map(|(span, key, message)| {
                let offset = span.as_ref().map_or(0, |s| s.start);
                let diagnostic = Diagnostic {
                    file: file.to_string(),
                    position: span.map(|s| line_col(text, s.start)),
                    key,
                    message,
                };
                (offset, diagnostic)
            })
            .collect();
        out.sort_by_key(|(offset, _)| *offset);
        out.dedup_by(|a, b| a.1 == b.1);
        out.into_iter().map(|(_, d)| d).collect()
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// Parses and validates config text. `file` is only used in messages.
pub fn parse(file: &str, text: &str, env: &Environment) -> Result<Config, Vec<Diagnostic>> {
    let mut problems = Problems::default();
    let config = parse_into(text, env, &mut problems);
    match config {
        Some(config) if problems.0.is_empty() => Ok(config),
        _ => Err(problems.into_diagnostics(file, text)),
    }
}

fn parse_into(text: &str, env: &Environment, problems: &mut Problems) -> Option<Config> {
    let (root, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        for e in syntax_errors {
            problems.add(e.span(), "", first_line(e.message()));
        }
        return None;
    }

    let mut raw_daemon = RawDaemon::default();
    let mut raw_fifos = Vec::new();
    let mut raw_processes = Vec::new();
    let mut raw_routes = Vec::new();
    // Names declared even by entries that fail to parse, so that a route
    // naming them does not add a misleading "unknown endpoint".
    let mut declared = HashSet::new();
    for (key, value) in root.get_ref() {
        match key.get_ref().as_ref() {
            "daemon" => {
                if let Some(d) = deserialize_table::<RawDaemon>(value, "daemon", problems) {
                    raw_daemon = d;
                }
            }
            "fifo" => match value.get_ref() {
                DeValue::Table(table) => {
                    for (name, entry) in table {
                        let key = format!("fifo.{}", name.get_ref());
                        if !declared.insert(name.get_ref().to_string()) {
                            problems.at(name, &key, "the name is already used by a [process.*] table");
                            continue;
                        }
                        if let Some(f) = deserialize_table::<RawFifo>(entry, &key, problems) {
                            raw_fifos.push((name.clone(), f));
                        }
                    }
                }
                _ => problems.at(value, "fifo", "expected tables such as [fifo.in]"),
            },
            "process" => match value.get_ref() {
                DeValue::Table(table) => {
                    for (name, entry) in table {
                        let key = format!("process.{}", name.get_ref());
                        if !declared.insert(name.get_ref().to_string()) {
                            problems.at(name, &key, "the name is already used by a [fifo.*] table");
                            continue;
                        }
                        if let Some(p) = deserialize_table::<RawProcess>(entry, &key, problems) {
                            raw_processes.push((name.clone(), p));
                        }
                    }
                }
                _ => problems.at(value, "process", "expected tables such as [process.tool]"),
            },
            "route" => match value.get_ref() {
                DeValue::Array(routes) => {
                    for (i, entry) in routes.iter().enumerate() {
                        let key = format!("route[{i}]");
                        if let Some(r) = deserialize_table::<RawRoute>(entry, &key, problems) {
                            raw_routes.push((i, r));
                        }
                    }
                }
                _ => problems.at(value, "route", "expected tables such as [[route]]"),
            },
            other => problems.at(
                key,
                other,
                "unknown key; the top level has [daemon], [fifo.NAME], [process.NAME] and [[route]]",
            ),
        }
    }

    let daemon = validate_daemon(raw_daemon, env, problems);
    let mut fifos: Vec<FifoConfig> = Vec::new();
    let mut path_spans = Vec::new();
    for (name, raw) in raw_fifos {
        if let Some((fifo, span)) = validate_fifo(&name, raw, daemon.as_ref(), problems) {
            fifos.push(fifo);
            path_spans.push(span);
        }
    }
    check_paths(&fifos, &path_spans, daemon.as_ref(), problems);
    let processes: Vec<ProcessConfig> = raw_processes
        .into_iter()
        .filter_map(|(name, raw)| validate_process(&name, raw, problems))
        .collect();
    let routes = validate_routes(raw_routes, &mut fifos, &processes, &declared, problems);
    let daemon = daemon?;
    Some(Config {
        daemon,
        fifos,
        processes,
        routes,
    })
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_string()
}

/// Deserializes one table, turning serde's first complaint into a located
/// problem with the key it is about.
fn deserialize_table<'i, T: Deserialize<'i>>(
    value: &Spanned<DeValue<'i>>,
    path: &str,
    problems: &mut Problems,
) -> Option<T> {
    let DeValue::Table(table) = value.get_ref() else {
        problems.at(value, path, "expected a table");
        return None;
    };
    match T::deserialize(ValueDeserializer::from(value.clone())) {
        Ok(parsed) => Some(parsed),
        Err(e) => {
            let span = e.span().unwrap_or_else(|| value.span());
            let message = first_line(e.message());
            if let Some(rest) = message.strip_prefix("missing field ") {
                let field = rest.trim_matches('`');
                problems.add(Some(span), format!("{path}.{field}"), "missing (required)");
                return None;
            }
            let mut key = path.to_string();
            for (k, v) in table {
                if k.span().contains(&span.start) || v.span().contains(&span.start) {
                    key = format!("{path}.{}", k.get_ref());
                    break;
                }
            }
            let message = match message.strip_prefix("unknown field ") {
                Some(rest) => match rest.split_once(", expected") {
                    Some((_, expected)) => {
                        format!("unknown key; expected{}", expected.replace('`', ""))
                    }
                    None => "unknown key".to_string(),
                },
                None => message,
            };
            problems.add(Some(span), key, message);
            None
        }
    }
}

fn validate_daemon(
    raw: RawDaemon,
    env: &Environment,
    problems: &mut Problems,
) -> Option<DaemonConfig> {
    let mut ok = true;
    let dir = match &raw.dir {
        Some(dir) => match normalize_path(dir.get_ref()) {
            Ok(path) if path.is_absolute() => Some(path),
            Ok(_) => {
                problems.at(dir, "daemon.dir", "must be an absolute path");
                None
            }
            Err(e) => {
                problems.at(dir, "daemon.dir", e);
                None
            }
        },
        None => match env
            .default_dir()
            .and_then(|d| normalize_path(&d.to_string_lossy()))
        {
            Ok(path) if path.is_absolute() => Some(path),
            Ok(path) => {
                let message = format!(
                    "not set, and the default {} is not absolute",
                    path.display()
                );
                problems.add(None, "daemon.dir", message);
                None
            }
            Err(e) => {
                problems.add(None, "daemon.dir", e);
                None
            }
        },
    };
    let mut field =
        |value: &Option<Spanned<String>>, key: &str, parse: &dyn Fn(&str) -> Result<(), String>| {
            if let Some(v) = value
                && let Err(e) = parse(v.get_ref())
            {
                problems.at(v, format!("daemon.{key}"), e);
                ok = false;
            }
        };
    field(&raw.dir_mode, "dir_mode", &|s| {
        Mode::parse(s).and_then(|mode| {
            if mode.bits() & 0o002 != 0 {
                Err(format!(
                    "{mode} lets everyone write to the directory, where they could swap a FIFO \
                     for something else; drop the last digit's write bit"
                ))
            } else {
                Ok(())
            }
        })
    });
    field(&raw.pipe_size, "pipe_size", &|s| {
        Size::parse(s).and_then(|size| check_range(size, 4096, MAX_BUFFER))
    });
    field(&raw.shutdown_timeout, "shutdown_timeout", &|s| {
        parse_duration(s).and_then(|d| {
            if d > MAX_SHUTDOWN_TIMEOUT {
                Err("must be at most 60m".to_string())
            } else {
                Ok(())
            }
        })
    });
    field(&raw.log_level, "log_level", &|s| {
        s.parse::<LevelFilter>().map(drop).map_err(|_| {
            format!("invalid level \"{s}\": expected off, error, warn, info, debug or trace")
        })
    });
    let control = validate_control(&raw.control, problems);
    let (true, Ok(control), Some(dir)) = (ok, control, dir) else {
        return None;
    };
    let get = |v: &Option<Spanned<String>>| v.as_ref().map(|s| s.get_ref().clone());
    Some(DaemonConfig {
        dir: dir.clone(),
        dir_mode: get(&raw.dir_mode)
            .and_then(|s| Mode::parse(&s).ok())
            .unwrap_or(Mode(0o755)),
        pipe_size: get(&raw.pipe_size).and_then(|s| Size::parse(&s).ok()),
        shutdown_timeout: get(&raw.shutdown_timeout)
            .and_then(|s| parse_duration(&s).ok())
            .unwrap_or(Duration::from_secs(5)),
        log_level: get(&raw.log_level)
            .and_then(|s| s.parse().ok())
            .unwrap_or(LevelFilter::Info),
        control: control.map(|c| dir.join(c)),
    })
}

/// The control socket's path, relative to `dir` unless absolute; an empty
/// string turns the socket off.
fn validate_control(
    raw: &Option<Spanned<String>>,
    problems: &mut Problems,
) -> Result<Option<PathBuf>, ()> {
    let Some(value) = raw else {
        return Ok(Some(PathBuf::from(DEFAULT_CONTROL)));
    };
    if value.get_ref().is_empty() {
        return Ok(None);
    }
    let path =
        normalize_path(value.get_ref()).map_err(|e| problems.at(value, "daemon.control", e))?;
    match path.file_name() {
        // Bound by name from inside its directory: only the name must fit
        // in a socket address.
        Some(name) if name.len() < SOCKET_NAME_MAX => Ok(Some(path)),
        Some(_) => {
            problems.at(
                value,
                "daemon.control",
                format!("the socket's name must be shorter than {SOCKET_NAME_MAX} bytes"),
            );
            Err(())
        }
        None => {
            problems.at(value, "daemon.control", "must name a file");
            Err(())
        }
    }
}

fn check_range(size: Size, min: u64, max: u64) -> Result<(), String> {
    if size.bytes() < min || size.bytes() > max {
        Err(format!(
            "{size} is out of range: must be between {} and {}",
            Size(min),
            Size(max)
        ))
    } else {
        Ok(())
    }
}

/// Names appear in routes and log lines; `.` is kept for derived endpoints
/// such as a process's `NAME.stderr`, and `stdin`/`stdout` for fifod's own.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(format!(
            "invalid name \"{}\": use letters, digits, '_' and '-'",
            name.escape_debug()
        ));
    }
    if name == "stdin" || name == "stdout" {
        return Err(format!("\"{name}\" is a reserved endpoint name"));
    }
    Ok(())
}

fn validate_fifo(
    name: &Spanned<std::borrow::Cow<'_, str>>,
    raw: RawFifo,
    daemon: Option<&DaemonConfig>,
    problems: &mut Problems,
) -> Option<(FifoConfig, Range<usize>)> {
    let key = format!("fifo.{}", name.get_ref());
    let mut ok = true;
    if let Err(e) = check_name(name.get_ref()) {
        problems.at(name, &key, e);
        ok = false;
    }
    let path_text = raw
        .path
        .as_ref()
        .map_or_else(|| name.get_ref().to_string(), |p| p.get_ref().clone());
    let path_span = raw.path.as_ref().map_or_else(|| name.span(), |p| p.span());
    let path = match normalize_path(&path_text) {
        Ok(p) if p.as_os_str().is_empty() => {
            problems.add(
                Some(path_span.clone()),
                format!("{key}.path"),
                "must not be empty",
            );
            None
        }
        Ok(p) => Some(p),
        Err(e) => {
            problems.add(Some(path_span.clone()), format!("{key}.path"), e);
            None
        }
    };
    let mode = match &raw.mode {
        None => Some(Mode(0o600)),
        Some(m) => Mode::parse(m.get_ref())
            .map_err(|e| problems.at(m, format!("{key}.mode"), e))
            .ok(),
    };
    let owner = raw
        .owner
        .as_ref()
        .map(|o| lookup_id(o, IdKind::User).map_err(|e| problems.at(o, format!("{key}.owner"), e)));
    let group = raw.group.as_ref().map(|g| {
        lookup_id(g, IdKind::Group).map_err(|e| problems.at(g, format!("{key}.group"), e))
    });
    let (Some(path), Some(mode)) = (path, mode) else {
        return None;
    };
    let owner = owner.transpose().ok()?;
    let group = group.transpose().ok()?;
    if !ok {
        return None;
    }
    let path = match daemon {
        Some(d) => d.dir.join(path),
        None => path,
    };
    Some((
        FifoConfig {
            name: name.get_ref().to_string(),
            path,
            mode,
            owner,
            group,
            role: Role::Unrouted,
        },
        path_span,
    ))
}

enum IdKind {
    User,
    Group,
}

fn lookup_id(spec: &Spanned<IdSpec>, kind: IdKind) -> Result<u32, String> {
    let name = match spec.get_ref() {
        IdSpec::Number(n) => return Ok(*n),
        IdSpec::Name(name) => name,
    };
    if let Ok(n) = name.parse::<u32>() {
        return Ok(n);
    }
    if name.contains('\0') {
        return Err("must not contain a NUL byte".to_string());
    }
    match kind {
        IdKind::User => match nix::unistd::User::from_name(name) {
            Ok(Some(user)) => Ok(user.uid.as_raw()),
            Ok(None) => Err(format!("unknown user \"{name}\"")),
            Err(e) => Err(format!("cannot look up user \"{name}\": {e}")),
        },
        IdKind::Group => match nix::unistd::Group::from_name(name) {
            Ok(Some(group)) => Ok(group.gid.as_raw()),
            Ok(None) => Err(format!("unknown group \"{name}\"")),
            Err(e) => Err(format!("cannot look up group \"{name}\": {e}")),
        },
    }
}

/// Lexically normalises a path: drops `.` and repeated slashes, refuses `..`
/// (which could climb out of `dir`, and makes two spellings of one path hard
/// to tell apart), NUL bytes and over-long names.
pub fn normalize_path(text: &str) -> Result<PathBuf, String> {
    if text.contains('\0') {
        return Err("must not contain a NUL byte".to_string());
    }
    if text.len() > PATH_MAX {
        return Err(format!(
            "is {} bytes long; at most {PATH_MAX} are allowed",
            text.len()
        ));
    }
    let mut out = PathBuf::new();
    for component in Path::new(text).components() {
        match component {
            Component::RootDir => out.push("/"),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("\"{text}\" must not contain \"..\"")),
            Component::Normal(part) => {
                if part.len() > NAME_MAX {
                    return Err(format!(
                        "has a component of {} bytes; at most {NAME_MAX} are allowed",
                        part.len()
                    ));
                }
                out.push(part);
            }
            Component::Prefix(_) => return Err(format!("\"{text}\" is not a Unix path")),
        }
    }
    Ok(out)
}

fn check_paths(
    fifos: &[FifoConfig],
    spans: &[Range<usize>],
    daemon: Option<&DaemonConfig>,
    problems: &mut Problems,
) {
    let Some(daemon) = daemon else { return };
    let lock = daemon.dir.join(LOCK_FILE_NAME);
    let mut seen: HashMap<&Path, &str> = HashMap::new();
    for (fifo, span) in fifos.iter().zip(spans) {
        let key = format!("fifo.{}.path", fifo.name);
        let span = Some(span.clone());
        if fifo.path == daemon.dir || daemon.dir.starts_with(&fifo.path) {
            problems.add(span, key, "is the daemon's dir or one of its parents");
        } else if fifo.path == lock {
            problems.add(span, key, "is the daemon's lock file");
        } else if daemon.control.as_ref() == Some(&fifo.path) {
            problems.add(span, key, "is the daemon's control socket (daemon.control)");
        } else if let Some(other) = seen.get(fifo.path.as_path()) {
            problems.add(span, key, format!("same path as fifo.{other}"));
        } else if let Some(other) = fifos
            .iter()
            .find(|o| o.path != fifo.path && fifo.path.starts_with(&o.path))
        {
            problems.add(
                span,
                key,
                format!("is inside fifo.{}, which is a FIFO", other.name),
            );
        }
        seen.insert(&fifo.path, &fifo.name);
    }
}

fn validate_process(
    name: &Spanned<std::borrow::Cow<'_, str>>,
    raw: RawProcess,
    problems: &mut Problems,
) -> Option<ProcessConfig> {
    let key = format!("process.{}", name.get_ref());
    let before = problems.0.len();
    if let Err(e) = check_name(name.get_ref()) {
        problems.at(name, &key, e);
    }
    let command: Vec<String> = raw
        .command
        .get_ref()
        .iter()
        .map(|a| a.get_ref().clone())
        .collect();
    let cwd = raw
        .cwd
        .as_ref()
        .and_then(|c| match normalize_path(c.get_ref()) {
            Ok(p) if p.is_absolute() => Some(p),
            Ok(_) => {
                problems.at(c, format!("{key}.cwd"), "must be an absolute path");
                None
            }
            Err(e) => {
                problems.at(c, format!("{key}.cwd"), e);
                None
            }
        });
    let env: Vec<(String, String)> = raw
        .env
        .as_ref()
        .map(|e| e.get_ref().clone().into_iter().collect())
        .unwrap_or_default();
    if let Some(e) = &raw.env {
        for (var, value) in e.get_ref() {
            if var.is_empty() || var.contains('=') || var.contains('\0') || value.contains('\0') {
                problems.at(
                    e,
                    format!("{key}.env"),
                    format!("invalid variable \"{}\"", var.escape_debug()),
                );
            }
        }
    }
    match raw.command.get_ref().first() {
        None => problems.at(
            &raw.command,
            format!("{key}.command"),
            "must name a program",
        ),
        Some(program)
            if program.get_ref().contains('\0') || command.iter().any(|a| a.contains('\0')) =>
        {
            problems.at(
                program,
                format!("{key}.command"),
                "must not contain a NUL byte",
            );
        }
        Some(program) => {
            let path_var = env
                .iter()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var("PATH").ok());
            if let Err(e) = find_program(program.get_ref(), cwd.as_deref(), path_var.as_deref()) {
                problems.at(program, format!("{key}.command"), e);
            }
        }
    }
    let mut choice = |value: &Option<Spanned<String>>, field: &str, options: &[&str]| -> usize {
        let Some(v) = value else { return 0 };
        match options.iter().position(|o| o == v.get_ref()) {
            Some(i) => i,
            None => {
                let quoted: Vec<String> = options.iter().map(|o| format!("\"{o}\"")).collect();
                problems.at(
                    v,
                    format!("{key}.{field}"),
                    format!(
                        "invalid value \"{}\": expected {}",
                        v.get_ref(),
                        quoted.join(", ")
                    ),
                );
                0
            }
        }
    };
    let stderr = [
        StderrMode::Merge,
        StderrMode::Separate,
        StderrMode::Log,
        StderrMode::Null,
        StderrMode::Inherit,
    ][choice(
        &raw.stderr,
        "stderr",
        &["merge", "separate", "log", "null", "inherit"],
    )];
    let restart = [Restart::OnFailure, Restart::Never, Restart::Always]
        [choice(&raw.restart, "restart", &["on-failure", "never", "always"])];
    let restart_delay = match &raw.restart_delay {
        None => Duration::from_millis(100),
        Some(d) => match parse_duration(d.get_ref()) {
            Ok(delay) if delay <= MAX_SHUTDOWN_TIMEOUT => delay,
            Ok(_) => {
                problems.at(d, format!("{key}.restart_delay"), "must be at most 60m");
                Duration::ZERO
            }
            Err(e) => {
                problems.at(d, format!("{key}.restart_delay"), e);
                Duration::ZERO
            }
        },
    };
    if problems.0.len() > before {
        return None;
    }
    Some(ProcessConfig {
        name: name.get_ref().to_string(),
        command,
        cwd,
        env,
        stderr,
        restart,
        restart_delay,
    })
}

/// Finds the program as `exec` would: a name with a `/` is a path (relative
/// to `cwd`), any other is looked up in `PATH`.
pub fn find_program(
    program: &str,
    cwd: Option<&Path>,
    path_var: Option<&str>,
) -> Result<PathBuf, String> {
    let runnable = |candidate: &Path| {
        candidate.is_file()
            && nix::unistd::access(candidate, nix::unistd::AccessFlags::X_OK).is_ok()
    };
    if program.contains('/') {
        let path = match cwd {
            Some(dir) => dir.join(program),
            None => PathBuf::from(program),
        };
        return if runnable(&path) {
            Ok(path)
        } else if path.exists() {
            Err(format!("program \"{program}\" is not an executable file"))
        } else {
            Err(format!("program \"{program}\" does not exist"))
        };
    }
    let path_var = path_var.unwrap_or("/usr/local/bin:/usr/bin:/bin");
    path_var
        .split(':')
        .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(program))
        .find(|candidate| runnable(candidate))
        .ok_or_else(|| format!("program \"{program}\" not found on PATH"))
}

/// What a name in a route's `from` or `to` can refer to.
enum Named<'a> {
    Fifo(usize),
    Process(&'a ProcessConfig),
    Stderr(&'a ProcessConfig),
    Std,
}

fn validate_routes(
    raw_routes: Vec<(usize, RawRoute)>,
    fifos: &mut [FifoConfig],
    processes: &[ProcessConfig],
    declared: &HashSet<String>,
    problems: &mut Problems,
) -> Vec<RouteConfig> {
    let fifo_index: HashMap<String, usize> = fifos
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name.clone(), i))
        .collect();
    let lookup = |name: &str| -> Option<Named<'_>> {
        if name == "stdin" || name == "stdout" {
            return Some(Named::Std);
        }
        if let Some(&i) = fifo_index.get(name) {
            return Some(Named::Fifo(i));
        }
        if let Some(p) = processes.iter().find(|p| p.name == name) {
            return Some(Named::Process(p));
        }
        let base = name.strip_suffix(".stderr")?;
        processes.iter().find(|p| p.name == base).map(Named::Stderr)
    };
    // Suggestions come from every declared name, valid or not.
    let mut known: Vec<String> = declared.iter().cloned().collect();
    known.sort();
    known.extend(["stdin".to_string(), "stdout".to_string()]);

    let mut routes = Vec::new();
    for (i, raw) in raw_routes {
        let mut ok = true;
        let mut from = Vec::new();
        let mut to = Vec::new();
        for (side, is_from) in [(&raw.from, true), (&raw.to, false)] {
            let key = format!("route[{i}].{}", if is_from { "from" } else { "to" });
            if side.get_ref().is_empty() {
                problems.at(side, &key, "must name at least one endpoint");
                ok = false;
            }
            let mut named_here = HashSet::new();
            for endpoint in side.get_ref() {
                let name = endpoint.get_ref().as_str();
                let mut fail = |message: String| {
                    problems.at(endpoint, &key, message);
                };
                if !named_here.insert(name) {
                    fail(format!("\"{name}\" is named twice"));
                    ok = false;
                    continue;
                }
                let Some(named) = lookup(name) else {
                    ok = false;
                    let base = name.strip_suffix(".stderr").unwrap_or(name);
                    if declared.contains(name) || declared.contains(base) {
                        continue; // its own entry already has an error
                    }
                    fail(match suggest(name, known.iter()) {
                        Some(close) => {
                            format!("unknown endpoint \"{name}\" (did you mean \"{close}\"?)")
                        }
                        None => format!("unknown endpoint \"{name}\""),
                    });
                    continue;
                };
                match (named, is_from) {
                    (Named::Std, true) if name == "stdin" => from.push(SourceRef::Stdin),
                    (Named::Std, false) if name == "stdout" => to.push(SinkRef::Stdout),
                    (Named::Std, _) => {
                        ok = false;
                        fail(format!(
                            "\"{name}\" is fifod's standard {}; it can only be {}",
                            if name == "stdin" { "input" } else { "output" },
                            if name == "stdin" {
                                "a source (in from)"
                            } else {
                                "a sink (in to)"
                            }
                        ));
                    }
                    (Named::Process(p), true) => from.push(SourceRef::Process(p.name.clone())),
                    (Named::Process(p), false) => to.push(SinkRef::Process(p.name.clone())),
                    (Named::Stderr(p), true) if p.stderr == StderrMode::Separate => {
                        from.push(SourceRef::Stderr(p.name.clone()));
                    }
                    (Named::Stderr(p), true) => {
                        ok = false;
                        fail(format!(
                            "\"{name}\" is a source only when process.{} has stderr = \"separate\"",
                            p.name
                        ));
                    }
                    (Named::Stderr(_), false) => {
                        ok = false;
                        fail(format!("\"{name}\" is a source; it cannot be in to"));
                    }
                    (Named::Fifo(index), is_from) => {
                        let role = if is_from { Role::Input } else { Role::Output };
                        let fifo = &mut fifos[index];
                        match fifo.role {
                            Role::Unrouted => fifo.role = role,
                            existing if existing != role => {
                                ok = false;
                                fail(format!(
                                    "fifo \"{name}\" cannot be both an input and an output \
                                     (a FIFO is read by fifod or written by it, not both)"
                                ));
                                continue;
                            }
                            _ => {}
                        }
                        if is_from {
                            from.push(SourceRef::Fifo(name.to_string()));
                        } else {
                            to.push(SinkRef::Fifo(name.to_string()));
                        }
                    }
                }
            }
        }
        let buffer = match &raw.buffer {
            None => Some(Size(1 << 20)),
            Some(b) => Size::parse(b.get_ref())
                .and_then(|size| check_range(size, MIN_BUFFER, MAX_BUFFER).map(|()| size))
                .map_err(|e| problems.at(b, format!("route[{i}].buffer"), e))
                .ok(),
        };
        let when_full = match &raw.when_full {
            None => Some(WhenFull::Block),
            Some(w) => WhenFull::parse(w.get_ref())
                .map_err(|e| problems.at(w, format!("route[{i}].when_full"), e))
                .ok(),
        };
        let eof = match raw.eof.as_ref().map(|e| (e, e.get_ref().as_str())) {
            None | Some((_, "hold")) => Some(Eof::Hold),
            Some((_, "forward")) => Some(Eof::Forward),
            Some((e, other)) => {
                problems.at(
                    e,
                    format!("route[{i}].eof"),
                    format!("invalid value \"{other}\": expected \"hold\" or \"forward\""),
                );
                None
            }
        };
        let framing = match raw.framing.as_ref().map(|f| (f, f.get_ref().as_str())) {
            None | Some((_, "bytes")) => Some(Framing::Bytes),
            Some((_, "lines")) => Some(Framing::Lines),
            Some((f, other)) => {
                problems.at(
                    f,
                    format!("route[{i}].framing"),
                    format!("invalid value \"{other}\": expected \"bytes\" or \"lines\""),
                );
                None
            }
        };
        let max_line = match (&raw.max_line, buffer) {
            (None, buffer) => Some(buffer.map_or(DEFAULT_MAX_LINE, |b| b.min(DEFAULT_MAX_LINE))),
            (Some(m), buffer) => {
                let key = format!("route[{i}].max_line");
                match Size::parse(m.get_ref()) {
                    Ok(size) if size.bytes() == 0 => {
                        problems.at(m, key, "must be at least 1B");
                        None
                    }
                    Ok(size) if buffer.is_some_and(|b| size > b) => {
                        problems.at(m, key, format!("{size} is larger than the route's buffer"));
                        None
                    }
                    Ok(size) => Some(size),
                    Err(e) => {
                        problems.at(m, key, e);
                        None
                    }
                }
            }
        };
        if let (true, Some(buffer), Some(when_full), Some(eof), Some(framing), Some(max_line)) =
            (ok, buffer, when_full, eof, framing, max_line)
        {
            routes.push(RouteConfig {
                from,
                to,
                buffer,
                when_full,
                eof,
                framing,
                max_line,
            });
        }
    }
    routes
}

/// The known name closest to a misspelt one, if it is close enough to be
/// what was meant.
fn suggest<'a>(wrong: &str, known: impl Iterator<Item = &'a String>) -> Option<&'a str> {
    known
        .map(|k| (edit_distance(wrong, k), k))
        .filter(|(d, k)| *d <= 2 && *d < k.chars().count().max(2))
        .min()
        .map(|(_, k)| k.as_str())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

impl Config {
    /// The one-line-per-item summary `fifod check` prints.
    pub fn summary(&self) -> Vec<String> {
        let d = &self.daemon;
        let mut lines = vec![format!(
            "daemon: dir {} (mode {}), shutdown_timeout {}, pipe_size {}",
            d.dir.display(),
            d.dir_mode,
            crate::units::format_duration(d.shutdown_timeout),
            d.pipe_size.map_or("default".to_string(), |s| s.to_string()),
        )];
        for fifo in &self.fifos {
            let role = match fifo.role {
                Role::Input => "input",
                Role::Output => "output",
                Role::Unrouted => "unrouted",
            };
            let mut line = format!(
                "fifo {}: {} ({role}, mode {}",
                fifo.name,
                fifo.path.display(),
                fifo.mode
            );
            if let Some(uid) = fifo.owner {
                line.push_str(&format!(", owner {uid}"));
            }
            if let Some(gid) = fifo.group {
                line.push_str(&format!(", group {gid}"));
            }
            line.push(')');
            lines.push(line);
        }
        for p in &self.processes {
            let restart = match p.restart {
                Restart::Never => "never",
                Restart::OnFailure => "on-failure",
                Restart::Always => "always",
            };
            lines.push(format!(
                "process {}: {:?} (stderr {}, restart {restart})",
                p.name,
                p.command,
                format!("{:?}", p.stderr).to_lowercase(),
            ));
        }
        for (i, route) in self.routes.iter().enumerate() {
            let names = |v: Vec<String>| v.join(", ");
            lines.push(format!(
                "route[{i}]: {} -> {} (buffer {}, when_full {}{})",
                names(route.from.iter().map(ToString::to_string).collect()),
                names(route.to.iter().map(ToString::to_string).collect()),
                route.buffer,
                route.when_full,
                match (route.framing, route.eof) {
                    (Framing::Lines, Eof::Forward) =>
                        format!(", lines up to {}, eof forward", route.max_line),
                    (Framing::Lines, Eof::Hold) => format!(", lines up to {}", route.max_line),
                    (Framing::Bytes, Eof::Forward) => ", eof forward".to_string(),
                    (Framing::Bytes, Eof::Hold) => String::new(),
                },
            ));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
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
                "f.toml:14:13: route[0].when_full: invalid policy \"sometimes\": expected \"block\", \"drop-newest\" or \"drop-oldest\"",
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
}
