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

mod trust;
mod validate;
use validate::{check_paths, validate_daemon, validate_fifo, validate_process, validate_routes};
pub use validate::{find_program, normalize_path};

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
    /// A group whose members may ask for the status too (the socket is
    /// then theirs to connect to, mode 0660).
    pub control_group: Option<u32>,
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
    /// Added to the inherited environment (or to a clean one).
    pub env: Vec<(String, String)>,
    /// Start from an empty environment (only `env`, a `PATH`, and the
    /// account's `HOME`, `USER`, `LOGNAME` and `SHELL`) rather than
    /// fifod's; the default for a process that sets `user`.
    pub clean_env: bool,
    pub stderr: StderrMode,
    pub restart: Restart,
    pub restart_delay: Duration,
    /// The user and group it runs as (fifod must be root to set them); a
    /// `user` without `group` runs with that user's primary group.
    pub user: Option<u32>,
    pub group: Option<u32>,
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
    /// Its `name`, else `route[N]` after its place in the file: what logs,
    /// the status and metrics call it.
    pub name: String,
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
    /// Another user could change the file (see `trust`); it was not read.
    Untrusted { path: PathBuf, reason: String },
}

impl LoadError {
    /// What kind of failure this is, in a few words.
    pub fn kind(&self) -> &'static str {
        match self {
            LoadError::Unreadable { .. } => "the config cannot be read",
            LoadError::Invalid(_) => "the new config is invalid",
            LoadError::Untrusted { .. } => "the config is refused: others could change it",
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Unreadable { path, reason } => {
                write!(f, "{}: cannot read config: {reason}", path.display())
            }
            LoadError::Untrusted { path, reason } => {
                write!(f, "{}: refused: {reason}", path.display())
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

/// Reads and validates the config at `path`, once it is sure that nobody
/// but root and fifod's user could have changed it (see `trust`): the
/// config that `run`, a reload and `check` act on. Touches nothing but the
/// file, the directories above it and the user and group databases.
pub fn load(path: &Path, env: &Environment) -> Result<Config, LoadError> {
    load_listed(path, env).map(|(config, _)| config)
}

/// [`load`] without the check of who could change the files: for `fifod
/// status`, which acts on nothing in them but the control socket's path.
pub fn load_untrusted(path: &Path, env: &Environment) -> Result<Config, LoadError> {
    load_files(path, env, false).map(|(config, _)| config)
}

/// [`load`], and which files it read and left alone.
pub fn load_listed(path: &Path, env: &Environment) -> Result<(Config, Listing), LoadError> {
    load_files(path, env, true)
}

/// The files of a config: the main file and the fragments beside it.
#[derive(Debug, Default)]
pub struct Listing {
    /// Every file read, the main file first, then the fragments in name
    /// order.
    pub read: Vec<PathBuf>,
    /// Files in the fragment directory that are not fragments, and why.
    pub ignored: Vec<(PathBuf, &'static str)>,
}

/// The directory of fragments beside the main file: `fifod.toml` has
/// `fifod.d/`, any other name `NAME.d/`.
pub fn fragment_dir(path: &Path) -> PathBuf {
    match path.extension() {
        Some(ext) if ext == "toml" => path.with_extension("d"),
        _ => {
            let mut dir = path.as_os_str().to_owned();
            dir.push(".d");
            PathBuf::from(dir)
        }
    }
}

/// Every `*.toml` in `dir` in name order, and what else is there: hidden
/// files, editor backups and other names are left alone.
fn list_fragments(dir: &Path) -> Result<Listing, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Listing::default()),
        Err(e) => return Err(e.to_string()),
    };
    let mut names = Vec::new();
    for entry in entries {
        names.push(entry.map_err(|e| e.to_string())?.file_name());
    }
    names.sort();
    let mut listing = Listing::default();
    for name in names {
        let path = dir.join(&name);
        let text = name.to_string_lossy();
        let why = if text.starts_with('.') {
            Some("a hidden file")
        } else if !text.ends_with(".toml") || text == ".toml" {
            Some("not a .toml file")
        } else if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            Some("not a regular file")
        } else {
            None
        };
        match why {
            Some(why) => listing.ignored.push((path, why)),
            None => listing.read.push(path),
        }
    }
    Ok(listing)
}

fn load_files(
    path: &Path,
    env: &Environment,
    check_trust: bool,
) -> Result<(Config, Listing), LoadError> {
    let dir = fragment_dir(path);
    let unreadable = |path: &Path| {
        let path = path.to_owned();
        move |reason| LoadError::Unreadable { path, reason }
    };
    let mut listing = list_fragments(&dir).map_err(unreadable(&dir))?;
    listing.read.insert(0, path.to_owned());
    let mut files = Vec::with_capacity(listing.read.len());
    for file in &listing.read {
        let bytes = read_trusted(file, check_trust)?;
        files.push((file.display().to_string(), bytes));
    }
    if check_trust && !listing.read[1..].is_empty() {
        trust::check_trusted(&dir).map_err(|reason| LoadError::Untrusted {
            path: dir.clone(),
            reason,
        })?;
    }
    let mut texts = Vec::with_capacity(files.len());
    for (name, bytes) in files {
        match String::from_utf8(bytes) {
            Ok(text) => texts.push((name, text)),
            Err(e) => {
                return Err(LoadError::Invalid(vec![not_utf8(&name, e.as_bytes())]));
            }
        }
    }
    let config = parse_files(&texts, env).map_err(LoadError::Invalid)?;
    Ok((config, listing))
}

fn read_trusted(path: &Path, check_trust: bool) -> Result<Vec<u8>, LoadError> {
    let bytes = read_bounded(path).map_err(|reason| LoadError::Unreadable {
        path: path.to_owned(),
        reason,
    })?;
    if check_trust {
        trust::check_trusted(path).map_err(|reason| LoadError::Untrusted {
            path: path.to_owned(),
            reason,
        })?;
    }
    Ok(bytes)
}

/// Where a daemon started with the file at `path` has its control socket,
/// judged from the `[daemon]` table alone, as far as the parser recovers
/// from mistakes elsewhere: `fifod status` then still reaches a daemon whose
/// file was edited into an invalid one since (which it did not apply). A
/// best guess, for a file [`load`] refused: `None` when the table is wrong
/// too, or turns the socket off.
pub fn locate_control(path: &Path, env: &Environment) -> Option<PathBuf> {
    let bytes = read_bounded(path).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    let (root, _) = DeTable::parse_recoverable(&text);
    let mut problems = Problems::default();
    let raw = match root.get_ref().get("daemon") {
        Some(value) => deserialize_table::<RawDaemon>(value, "daemon", &mut problems)?,
        None => RawDaemon::default(),
    };
    validate_daemon(raw, env, &mut problems)?.control
}

/// [`parse`] for the file's bytes: one that is not UTF-8 is an invalid
/// config, located at its first byte that is not.
pub fn parse_bytes(file: &str, bytes: &[u8], env: &Environment) -> Result<Config, Vec<Diagnostic>> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(file, text, env),
        Err(_) => Err(vec![not_utf8(file, bytes)]),
    }
}

/// Where a file that is not UTF-8 stops being it.
fn not_utf8(file: &str, bytes: &[u8]) -> Diagnostic {
    let valid = match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) => e.valid_up_to(),
    };
    let before = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
    let byte = bytes.get(valid).copied().unwrap_or_default();
    Diagnostic {
        file: file.to_string(),
        position: Some(line_col(before, valid)),
        key: String::new(),
        message: format!("invalid UTF-8 (byte 0x{byte:02x}): a config must be UTF-8 text"),
    }
}

/// Only a regular file of bounded size is read: a FIFO or a device given as
/// the config must not hang or exhaust the daemon.
fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
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
    Ok(bytes)
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
    control_group: Option<Spanned<IdSpec>>,
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
#[serde(
    untagged,
    expecting = "expected a name or a numeric id from 0 to 4294967295"
)]
enum IdSpec {
    Number(u32),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Option<Spanned<String>>,
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
    user: Option<Spanned<IdSpec>>,
    group: Option<Spanned<IdSpec>>,
    clean_env: Option<Spanned<bool>>,
}

/// The `PATH` of a process started with a clean environment, unless its
/// `env` sets one.
pub const CLEAN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Errors gathered while loading, still as byte spans. The files of a
/// config (the main file, then its fragments) share one range of offsets:
/// a file's spans are shifted by `base`, where its text starts in it.
#[derive(Default)]
struct Problems {
    found: Vec<(Option<Range<usize>>, String, String)>,
    /// Where the file whose spans are being reported starts.
    base: usize,
}

impl Problems {
    fn add(
        &mut self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        let (key, message) = (escape_controls(key.into()), escape_controls(message.into()));
        let span = span.map(|s| s.start + self.base..s.end + self.base);
        self.found.push((span, key, message));
    }

    fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    fn at<T>(&mut self, value: &Spanned<T>, key: impl Into<String>, message: impl Into<String>) {
        self.add(Some(value.span()), key, message);
    }

    fn into_diagnostics(self, files: &Files<'_>) -> Vec<Diagnostic> {
        let mut out: Vec<(usize, Diagnostic)> = self
            .found
            .into_iter()
            .map(|(span, key, message)| {
                let offset = span.as_ref().map_or(0, |s| s.start);
                let (file, position) = files.locate(offset);
                let diagnostic = Diagnostic {
                    file: file.to_string(),
                    position: span.map(|_| position),
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

/// Keys and values are echoed in messages: a newline or an escape sequence
/// in them must not split a diagnostic or reach the terminal as it is.
fn escape_controls(text: String) -> String {
    if !text.chars().any(char::is_control) {
        return text;
    }
    text.chars()
        .map(|c| match c.is_control() {
            true => c.escape_debug().to_string(),
            false => c.to_string(),
        })
        .collect()
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    // A byte order mark is invisible in editors: columns start after it.
    let in_line = before[line_start..].trim_start_matches('\u{feff}');
    let col = in_line.chars().count() + 1;
    (line, col)
}

/// The texts of a config's files, the main file first, and where each
/// starts in the offsets that `Problems` records.
struct Files<'t> {
    /// (name in messages, text, base).
    files: Vec<(&'t str, &'t str, usize)>,
}

impl<'t> Files<'t> {
    fn new(files: &'t [(String, String)]) -> Files<'t> {
        let mut base = 0;
        let files = files
            .iter()
            .map(|(name, text)| {
                let file = (name.as_str(), text.as_str(), base);
                // One offset between files: a span at a file's very end is
                // still that file's.
                base += text.len() + 1;
                file
            })
            .collect();
        Files { files }
    }

    /// The file an offset is in, and its line and column there.
    fn locate(&self, offset: usize) -> (&'t str, (usize, usize)) {
        let i = self
            .files
            .partition_point(|&(_, _, base)| base <= offset)
            .saturating_sub(1);
        match self.files.get(i) {
            Some(&(name, text, base)) => (name, line_col(text, offset - base)),
            None => ("", (1, 1)),
        }
    }

    /// `file:line:column` of an offset, for messages that point elsewhere.
    fn place(&self, offset: usize) -> String {
        let (file, (line, col)) = self.locate(offset);
        format!("{file}:{line}:{col}")
    }
}

/// Parses and validates config text. `file` is only used in messages.
pub fn parse(file: &str, text: &str, env: &Environment) -> Result<Config, Vec<Diagnostic>> {
    parse_files(&[(file.to_string(), text.to_string())], env)
}

/// Parses and validates a config made of several files: `(name in
/// messages, text)`, the main file first, then its fragments, which add
/// `[fifo.*]`, `[process.*]` and `[[route]]` to it.
pub fn parse_files(
    files: &[(String, String)],
    env: &Environment,
) -> Result<Config, Vec<Diagnostic>> {
    let located = Files::new(files);
    let mut problems = Problems::default();
    let config = parse_into(&located, env, &mut problems);
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(problems.into_diagnostics(&located)),
    }
}

fn parse_into(files: &Files<'_>, env: &Environment, problems: &mut Problems) -> Option<Config> {
    let mut roots = Vec::new();
    for &(_, text, base) in &files.files {
        problems.base = base;
        let (root, syntax_errors) = DeTable::parse_recoverable(text);
        for e in &syntax_errors {
            let span = e.span().or_else(|| locate_unspanned(text, e.message()));
            problems.add(span, "", first_line(e.message()));
        }
        roots.push((base, root));
    }
    if !problems.is_empty() {
        return None;
    }

    let mut raw_daemon = RawDaemon::default();
    let mut raw_fifos = Vec::new();
    let mut raw_processes = Vec::new();
    let mut raw_routes = Vec::new();
    // Names declared even by entries that fail to parse, so that a route
    // naming them does not add a misleading "unknown endpoint"; with where
    // each was declared first.
    let mut declared: HashMap<String, usize> = HashMap::new();
    let mut declare = |name: &Spanned<std::borrow::Cow<'_, str>>,
                       key: &str,
                       other_kind: &str,
                       base: usize,
                       problems: &mut Problems| {
        let at = name.span().start + base;
        match declared.get(name.get_ref().as_ref()) {
            None => {
                declared.insert(name.get_ref().to_string(), at);
                true
            }
            Some(&first) if files.locate(first).0 == files.locate(at).0 => {
                problems.at(
                    name,
                    key,
                    format!("the name is already used by a {other_kind} table"),
                );
                false
            }
            Some(&first) => {
                problems.at(name, key, format!("also defined in {}", files.place(first)));
                false
            }
        }
    };
    let mut route_count = 0;
    for (file, (base, root)) in roots.iter().enumerate() {
        problems.base = *base;
        for (key, value) in root.get_ref() {
            match key.get_ref().as_ref() {
                "daemon" if file > 0 => problems.at(
                    key,
                    "daemon",
                    "only the main file may have [daemon]; a fragment adds [fifo.NAME], \
                     [process.NAME] and [[route]]",
                ),
                "daemon" => {
                    if let Some(d) = deserialize_table::<RawDaemon>(value, "daemon", problems) {
                        raw_daemon = d;
                    }
                }
                "fifo" => match value.get_ref() {
                    DeValue::Table(table) => {
                        for (name, entry) in table {
                            let key = format!("fifo.{}", name.get_ref());
                            if !declare(name, &key, "[process.*]", *base, problems) {
                                continue;
                            }
                            if let Some(f) = deserialize_table::<RawFifo>(entry, &key, problems) {
                                raw_fifos.push((*base, name.clone(), f));
                            }
                        }
                    }
                    _ => problems.at(value, "fifo", "expected tables such as [fifo.in]"),
                },
                "process" => match value.get_ref() {
                    DeValue::Table(table) => {
                        for (name, entry) in table {
                            let key = format!("process.{}", name.get_ref());
                            if !declare(name, &key, "[fifo.*]", *base, problems) {
                                continue;
                            }
                            if let Some(p) = deserialize_table::<RawProcess>(entry, &key, problems)
                            {
                                raw_processes.push((*base, name.clone(), p));
                            }
                        }
                    }
                    _ => problems.at(value, "process", "expected tables such as [process.tool]"),
                },
                "route" => match value.get_ref() {
                    DeValue::Array(routes) => {
                        for entry in routes {
                            let i = route_count;
                            route_count += 1;
                            let key = format!("route[{i}]");
                            if let Some(r) = deserialize_table::<RawRoute>(entry, &key, problems) {
                                raw_routes.push((i, *base, r));
                            }
                        }
                    }
                    _ => problems.at(value, "route", "expected tables such as [[route]]"),
                },
                other => problems.at(
                    key,
                    if other.is_empty() { "\"\"" } else { other },
                    "unknown key; the top level has [daemon], [fifo.NAME], [process.NAME] and \
                     [[route]]",
                ),
            }
        }
    }

    problems.base = 0;
    let daemon = validate_daemon(raw_daemon, env, problems);
    let mut fifos: Vec<FifoConfig> = Vec::new();
    let mut path_spans = Vec::new();
    for (base, name, raw) in raw_fifos {
        problems.base = base;
        if let Some((fifo, span)) = validate_fifo(&name, raw, daemon.as_ref(), problems) {
            fifos.push(fifo);
            path_spans.push(span.start + base..span.end + base);
        }
    }
    problems.base = 0;
    check_paths(&fifos, &path_spans, daemon.as_ref(), problems);
    let processes: Vec<ProcessConfig> = raw_processes
        .into_iter()
        .filter_map(|(base, name, raw)| {
            problems.base = base;
            validate_process(&name, raw, env, problems)
        })
        .collect();
    let declared: HashSet<String> = declared.into_keys().collect();
    let routes = validate_routes(raw_routes, &mut fifos, &processes, &declared, problems);
    problems.base = 0;
    if declared.is_empty() && routes.is_empty() && problems.is_empty() {
        // Most likely a file caught half-written; at start as on reload,
        // there would be nothing for fifod to do.
        problems.add(
            Some(0..0),
            "fifo",
            "the config declares no FIFO and no process: there is nothing for fifod to do \
             (an empty or truncated file?)",
        );
    }
    let daemon = daemon?;
    Some(Config {
        daemon,
        fifos,
        processes,
        routes,
    })
}

/// The line where the parser reported an error without a span (a key of too
/// many dotted parts, say): the first line such that the text up to its end
/// already gives that error. The parser reads left to right, so a longer
/// prefix keeps the error once it has it.
fn locate_unspanned(text: &str, message: &str) -> Option<Range<usize>> {
    let line_ends: Vec<usize> = text
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .chain([text.len()])
        .collect();
    let fails = |end: usize| {
        let (_, errors) = DeTable::parse_recoverable(&text[..end]);
        errors
            .iter()
            .any(|e| e.span().is_none() && e.message() == message)
    };
    let first = line_ends.partition_point(|&end| !fails(end));
    let end = *line_ends.get(first)?;
    let start = line_ends[..first].last().copied().unwrap_or(0);
    // At the line's first character that is not blank.
    let indent = text[start..end].len() - text[start..end].trim_start().len();
    let at = (start + indent).min(end);
    Some(at..end)
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

impl Config {
    /// The one-line-per-item summary `fifod check` prints.
    pub fn summary(&self) -> Vec<String> {
        let d = &self.daemon;
        let mut lines = vec![format!(
            "daemon: dir {} (mode {}), shutdown_timeout {}, pipe_size {}",
            d.dir.display(),
            d.dir_mode,
            crate::units::format_duration(d.shutdown_timeout),
            d.pipe_size.map_or("auto".to_string(), |s| s.to_string()),
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
            let mut identity = String::new();
            if let Some(uid) = p.user {
                identity.push_str(&format!(", user {uid}"));
            }
            if let Some(gid) = p.group {
                identity.push_str(&format!(", group {gid}"));
            }
            lines.push(format!(
                "process {}: {:?} (stderr {}, restart {restart}{identity})",
                p.name,
                p.command,
                format!("{:?}", p.stderr).to_lowercase(),
            ));
        }
        for route in &self.routes {
            let names = |v: Vec<String>| v.join(", ");
            lines.push(format!(
                "{}: {} -> {} (buffer {}, when_full {}{})",
                route.name,
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
mod tests;
