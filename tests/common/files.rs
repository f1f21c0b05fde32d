//! File-system helpers: making nodes with exact modes, listing a directory,
//! and a snapshot of everything observable about a path.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::Mode;
use nix::unistd::{User, mkfifo};

use super::{BIN, Sandbox};

/// The lock file fifod keeps in its `dir`.
pub const LOCK: &str = ".fifod.lock";

/// lstat, or None if the path does not exist.
pub fn lstat(path: &Path) -> Option<fs::Metadata> {
    fs::symlink_metadata(path).ok()
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The names in `dir`, sorted.
pub fn names_in(dir: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name())
        .collect();
    v.sort();
    v
}

/// `list` as `names_in` returns it: sorted.
pub fn names(list: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> = list.iter().map(OsString::from).collect();
    v.sort();
    v
}

pub fn mkdir_mode(path: &Path, mode: u32) {
    fs::create_dir(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn mkfifo_mode(path: &Path, mode: u32) {
    mkfifo(path, Mode::from_bits_truncate(0o600)).expect("mkfifo");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

pub fn write_mode(path: &Path, content: &[u8], mode: u32) {
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The user `nobody`.
pub fn nobody_user() -> User {
    User::from_name("nobody")
        .unwrap()
        .expect("user nobody exists")
}

/// The uid and gid of `nobody`.
pub fn nobody() -> (u32, u32) {
    let user = nobody_user();
    (user.uid.as_raw(), user.gid.as_raw())
}

/// A shell script `name` in the sandbox (for `Launch::bin`) that runs
/// `prelude`, then `exec <exec>'<fifod>' "$@"`.
pub fn wrapper_script(sb: &Sandbox, name: &str, prelude: &str, exec: &str) -> PathBuf {
    let script = sb.path(name);
    fs::write(
        &script,
        format!("#!/bin/sh\n{prelude}exec {exec}'{BIN}' \"$@\"\n"),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// A script that runs fifod under `prlimit --nofile=LIMITS`.
pub fn under_prlimit(sb: &Sandbox, limits: &str) -> PathBuf {
    wrapper_script(
        sb,
        "limited-fifod",
        "",
        &format!("prlimit --nofile={limits} "),
    )
}

/// The permission bits of `path` (not following a symlink).
pub fn mode_of(path: &Path) -> u32 {
    lstat(path)
        .unwrap_or_else(|| panic!("{} does not exist", path.display()))
        .mode()
        & 0o7777
}

/// `path` is a FIFO with permission bits `mode`.
pub fn assert_fifo(path: &Path, mode: u32) {
    let got = fifo_node(path).mode;
    assert_eq!(
        got,
        mode,
        "{}: mode {got:04o}, expected {mode:04o}",
        path.display()
    );
}

/// What identifies a FIFO node and what fifod could change about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
}

/// The node at `path` (not following a symlink); panics unless it is a
/// FIFO.
pub fn fifo_node(path: &Path) -> Node {
    let md = lstat(path).unwrap_or_else(|| panic!("{} does not exist", path.display()));
    assert!(md.file_type().is_fifo(), "{} is not a FIFO", path.display());
    Node {
        dev: md.dev(),
        ino: md.ino(),
        mode: md.mode() & 0o7777,
    }
}

/// Everything observable about a path, without following symlinks. The
/// ctime changes with any chmod, chown, link or write, even one undone.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub content: Option<Vec<u8>>,
    pub link: Option<PathBuf>,
    pub entries: Option<Vec<OsString>>,
}

pub fn snapshot(path: &Path) -> Snapshot {
    let md = lstat(path).unwrap_or_else(|| panic!("{} vanished", path.display()));
    let ft = md.file_type();
    Snapshot {
        dev: md.dev(),
        ino: md.ino(),
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        size: md.size(),
        nlink: md.nlink(),
        mtime: (md.mtime(), md.mtime_nsec()),
        ctime: (md.ctime(), md.ctime_nsec()),
        content: ft.is_file().then(|| fs::read(path).unwrap()),
        link: ft.is_symlink().then(|| fs::read_link(path).unwrap()),
        entries: ft.is_dir().then(|| names_in(path)),
    }
}
