//! The filesystem side: resolving directories without following symlinks,
//! creating, adopting and refusing FIFOs, the instance lock, and removing
//! exactly what fifod made. No other module creates or removes a path.
//!
//! Every operation goes through a directory fd (`*at` calls) once the
//! directory has been resolved, so a path cannot be redirected under us.

use std::collections::{HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use log::{info, warn};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode as NixMode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, mkfifoat, unlinkat};

use crate::config::{Config, DaemonConfig, FifoConfig, LOCK_FILE_NAME};
use crate::units::Mode;

/// How many symlinks one directory lookup may pass through (as the kernel's
/// own limit for path resolution).
const MAX_SYMLINKS: usize = 40;

#[derive(Debug)]
pub enum FsError {
    /// Something is at a path that fifod will not touch.
    Refused { path: PathBuf, reason: String },
    /// A system call failed.
    Failed {
        path: PathBuf,
        action: &'static str,
        errno: Errno,
    },
    /// Another instance holds the lock on the directory.
    Locked { dir: PathBuf, pid: Option<u32> },
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsError::Refused { path, reason } => {
                write!(f, "refusing {}: {reason}", path.display())
            }
            FsError::Failed {
                path,
                action,
                errno,
            } => write!(f, "cannot {action} {}: {}", path.display(), errno.desc()),
            FsError::Locked { dir, pid } => {
                write!(f, "another fifod is already running on {}", dir.display())?;
                match pid {
                    Some(pid) => write!(f, " (pid {pid})"),
                    None => write!(f, " (pid unknown)"),
                }
            }
        }
    }
}

fn refused(path: &Path, reason: impl Into<String>) -> FsError {
    FsError::Refused {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn failed<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(Errno) -> FsError + 'a {
    move |errno| FsError::Failed {
        path: path.to_owned(),
        action,
        errno,
    }
}

/// `(st_dev, st_ino)`: how fifod recognises a node it made or adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId {
    dev: u64,
    ino: u64,
}

impl NodeId {
    fn of(st: &FileStat) -> NodeId {
        NodeId {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }

    /// The node an open fd is on.
    pub fn of_fd(fd: BorrowedFd<'_>) -> nix::Result<NodeId> {
        fstat(fd).map(|st| NodeId::of(&st))
    }
}

fn file_kind(st: &FileStat) -> &'static str {
    match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFLNK => "a symbolic link",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFIFO => "a FIFO",
        _ => "an unknown kind of file",
    }
}

fn is_kind(st: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == kind
}

/// A directory entry fifod may remove at the end: the directory that holds
/// it, its name there, and the node it must still be.
#[derive(Debug)]
struct Entry {
    parent: Rc<OwnedFd>,
    name: OsString,
    path: PathBuf,
    id: NodeId,
}

impl Entry {
    /// Whether its path still names the node.
    fn in_place(&self) -> bool {
        fstatat(
            self.parent.as_fd(),
            self.name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok_and(|st| NodeId::of(&st) == self.id)
    }

    /// Removes the entry if it still is the same node; says why not
    /// otherwise. Once the path is seen to name it, it is renamed to a
    /// private name, and what is looked at there is what is removed: a node
    /// swapped in between the look and the rename is never the one unlinked
    /// (it is renamed back).
    fn remove(&self, flags: UnlinkatFlags) -> Result<(), String> {
        // A directory is removed only if empty, by name: moving one that
        // someone filled out of the way would disturb its users.
        if matches!(flags, UnlinkatFlags::RemoveDir) {
            return self.remove_by_name(flags);
        }
        // Something else at the path already is not touched at all.
        self.still_here()?;
        let parent = self.parent.as_fd();
        let temp = private_name();
        match rename_noreplace(parent, &self.name, &temp) {
            Ok(()) => {}
            Err(Errno::ENOENT) => return Err("it is already gone".to_string()),
            // The filesystem cannot: look, then unlink by name.
            Err(Errno::EINVAL | Errno::ENOSYS) => return self.remove_by_name(flags),
            Err(e) => return Err(e.desc().to_string()),
        }
        let put_back = |why: String| match rename_noreplace(parent, &temp, &self.name) {
            Ok(()) => why,
            Err(e) => format!(
                "{why}; it is left at {} ({})",
                self.path.with_file_name(&temp).display(),
                e.desc()
            ),
        };
        match fstatat(parent, temp.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if NodeId::of(&st) == self.id => unlinkat(parent, temp.as_os_str(), flags)
                .map_err(|e| put_back(e.desc().to_string())),
            Ok(st) => Err(put_back(format!(
                "it was replaced by {} that fifod did not make",
                file_kind(&st)
            ))),
            Err(e) => Err(put_back(e.desc().to_string())),
        }
    }

    /// `remove` where a rename that replaces nothing is not to be had.
    fn remove_by_name(&self, flags: UnlinkatFlags) -> Result<(), String> {
        self.still_here()?;
        unlinkat(self.parent.as_fd(), self.name.as_os_str(), flags)
            .map_err(|e| e.desc().to_string())
    }

    /// Ok if the path still names the node; else why not.
    fn still_here(&self) -> Result<(), String> {
        match fstatat(
            self.parent.as_fd(),
            self.name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) if NodeId::of(&st) == self.id => Ok(()),
            Ok(st) => Err(format!(
                "it was replaced by {} that fifod did not make",
                file_kind(&st)
            )),
            Err(Errno::ENOENT) => Err("it is already gone".to_string()),
            Err(e) => Err(e.desc().to_string()),
        }
    }
}

/// A FIFO fifod created or adopted, held open read-write and non-blocking:
/// an input never sees EOF between writers, an output never raises EPIPE and
/// keeps its bytes while no reader is there.
#[derive(Debug)]
pub struct ManagedFifo {
    pub name: String,
    pub path: PathBuf,
    /// The read-write fd opened at start, until the daemon takes it.
    fd: Option<OwnedFd>,
    /// An `O_PATH` handle on the node itself: every later open goes through
    /// it, never through the path, so nothing swapped in at the path is
    /// ever opened.
    node: OwnedFd,
    /// It was already there at start (left by a crash, say).
    pub adopted: bool,
    /// The service manager made it and passed its fd: it is systemd's to
    /// chmod and remove, never fifod's.
    pub passed: bool,
    entry: Entry,
}

/// Everything fifod made or adopted on disk, so that it can be undone exactly.
#[derive(Debug, Default)]
pub struct Footprint {
    pub fifos: Vec<ManagedFifo>,
    /// The control socket's listener, until the daemon takes it.
    control: Option<UnixListener>,
    control_entry: Option<Entry>,
    created_dirs: Vec<Entry>,
    dirs: HashMap<PathBuf, Rc<OwnedFd>>,
    lock: Option<(File, Entry)>,
    /// fifod's `dir`: below it, no symbolic link is ever followed.
    base: Option<PathBuf>,
}

impl Footprint {
    /// Creates the directory, takes the lock, and creates or adopts every
    /// FIFO of `config`, in that order. On failure, undoes what it did and
    /// leaves adopted nodes in place.
    pub fn create(config: &Config, passed: HashMap<String, OwnedFd>) -> Result<Footprint, FsError> {
        let mut footprint = Footprint::default();
        match footprint.populate(config, passed) {
            Ok(()) => Ok(footprint),
            Err(e) => {
                footprint.undo_start();
                Err(e)
            }
        }
    }

    fn populate(
        &mut self,
        config: &Config,
        mut passed: HashMap<String, OwnedFd>,
    ) -> Result<(), FsError> {
        let daemon = &config.daemon;
        let dir = self.open_dir(&daemon.dir, Some(daemon.dir_mode))?;
        self.base = Some(daemon.dir.clone());
        // The lock and the control socket live here: nobody else may be
        // able to put a file in it, sticky bit or not.
        let st = fstat(dir.as_ref()).map_err(failed(&daemon.dir, "inspect"))?;
        if st.st_mode & 0o002 != 0 {
            return Err(refused(
                &daemon.dir,
                "the directory is writable by everyone; fifod's own dir must not be",
            ));
        }
        self.lock = Some(take_lock(&dir, &daemon.dir)?);
        let mut nodes: HashMap<NodeId, usize> = HashMap::new();
        for spec in &config.fifos {
            let fifo = match passed.remove(&spec.name) {
                Some(fd) => {
                    let parent_path = spec.path.parent().unwrap_or(Path::new("/"));
                    let parent = self.open_dir(parent_path, None)?;
                    take_passed(&parent, spec, fd)?
                }
                None => self.make_fifo(daemon, spec)?,
            };
            if let Some(&other) = nodes.get(&fifo.node_id()) {
                let err = one_node(&fifo, &self.fifos[other]);
                self.fifos.push(fifo);
                return Err(err);
            }
            nodes.insert(fifo.node_id(), self.fifos.len());
            self.fifos.push(fifo);
        }
        if let Some(path) = &daemon.control {
            let parent_path = path.parent().unwrap_or(Path::new("/"));
            let create = parent_path
                .starts_with(&daemon.dir)
                .then_some(daemon.dir_mode);
            let parent = self.open_dir(parent_path, create)?;
            let (listener, entry) = bind_control(&parent, path, daemon.control_group)?;
            self.control = Some(listener);
            self.control_entry = Some(entry);
        }
        Ok(())
    }

    /// Makes sure fifod still holds the lock in `dir` before it makes
    /// anything there again: after someone removed `dir` (or the lock
    /// file), `dir` is made again and the lock taken again. An error (another
    /// fifod took the directory meanwhile, say) means nothing may be made.
    pub fn relock(&mut self, daemon: &DaemonConfig) -> Result<(), FsError> {
        if self
            .lock
            .as_ref()
            .is_some_and(|(_, entry)| entry.in_place())
        {
            return Ok(());
        }
        let dir = self.open_dir(&daemon.dir, Some(daemon.dir_mode))?;
        let (file, entry) = take_lock(&dir, &daemon.dir)?;
        warn!(
            "{}: the lock was gone (someone removed the directory or the file); took it again",
            entry.path.display()
        );
        self.lock = Some((file, entry));
        Ok(())
    }

    /// Creates or adopts one FIFO (and the directories above it, inside
    /// `dir`). The caller keeps it in `fifos` for it to be removed at the end.
    pub fn make_fifo(
        &mut self,
        daemon: &DaemonConfig,
        spec: &FifoConfig,
    ) -> Result<ManagedFifo, FsError> {
        let parent_path = spec.path.parent().unwrap_or(Path::new("/"));
        let create = parent_path
            .starts_with(&daemon.dir)
            .then_some(daemon.dir_mode);
        let parent = self.open_dir(parent_path, create)?;
        open_fifo(&parent, spec)
    }

    /// Hands the control socket's listener to the caller.
    pub fn take_control(&mut self) -> Option<UnixListener> {
        self.control.take()
    }

    /// Opens `path` as a directory, one component at a time and never
    /// following a symlink, except root-owned ones above the last component
    /// (such as `/var/run`). Missing components are made with `create`.
    fn open_dir(&mut self, path: &Path, create: Option<Mode>) -> Result<Rc<OwnedFd>, FsError> {
        if let Some(fd) = self.dirs.get(path) {
            // A directory someone removed has no links left: look again.
            if fstat(fd.as_ref()).is_ok_and(|st| st.st_nlink > 0) {
                return Ok(Rc::clone(fd));
            }
            self.dirs.remove(path);
        }
        if let Some(base) = self.base.clone()
            && path != base
            && path.starts_with(&base)
        {
            return self.open_below(&base, path, create);
        }
        let root = openat(
            nix::fcntl::AT_FDCWD,
            "/",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            NixMode::empty(),
        )
        .map_err(failed(Path::new("/"), "open"))?;
        let root = Rc::new(root);
        // The directories walked so far; `..` from a symlink target pops one.
        let mut stack: Vec<Rc<OwnedFd>> = Vec::new();
        let mut shown = PathBuf::from("/");
        let mut pending: VecDeque<OsString> = components(path);
        let mut links = 0;
        while let Some(name) = pending.pop_front() {
            if name == ".." {
                stack.pop();
                shown.pop();
                continue;
            }
            let current = Rc::clone(stack.last().unwrap_or(&root));
            shown.push(&name);
            let opened = openat(
                current.as_fd(),
                name.as_os_str(),
                OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                NixMode::empty(),
            );
            match opened {
                Ok(fd) => {
                    let st = fstat(&fd).map_err(failed(&shown, "inspect"))?;
                    if is_kind(&st, SFlag::S_IFDIR) {
                        stack.push(Rc::new(fd));
                    } else if is_kind(&st, SFlag::S_IFLNK) {
                        if pending.is_empty() {
                            return Err(refused(
                                &shown,
                                "it is a symbolic link, which fifod never follows",
                            ));
                        }
                        if st.st_uid != 0 {
                            return Err(refused(
                                &shown,
                                "it is a symbolic link not owned by root, which fifod never follows",
                            ));
                        }
                        links += 1;
                        if links > MAX_SYMLINKS {
                            return Err(refused(&shown, "too many levels of symbolic links"));
                        }
                        let target = readlinkat(current.as_fd(), name.as_os_str())
                            .map_err(failed(&shown, "read link"))?;
                        shown.pop();
                        let target = PathBuf::from(target);
                        if target.is_absolute() {
                            stack.clear();
                            shown = PathBuf::from("/");
                        }
                        for part in components(&target).into_iter().rev() {
                            pending.push_front(part);
                        }
                    } else {
                        return Err(refused(
                            &shown,
                            format!("it is {}, not a directory", file_kind(&st)),
                        ));
                    }
                }
                Err(Errno::ENOENT) if let Some(mode) = create => {
                    stack.push(Rc::new(self.create_dir(&current, &name, &shown, mode)?));
                }
                Err(e) => return Err(failed(&shown, "open directory")(e)),
            }
        }
        let dir = stack.pop().unwrap_or(root);
        let st = fstat(dir.as_ref()).map_err(failed(path, "inspect"))?;
        check_dir_is_safe(path, &st)?;
        self.dirs.insert(path.to_owned(), Rc::clone(&dir));
        Ok(dir)
    }

    /// Makes directory `name` in `parent` and records it, to be removed at
    /// the end if it is empty then.
    fn create_dir(
        &mut self,
        parent: &Rc<OwnedFd>,
        name: &OsStr,
        shown: &Path,
        mode: Mode,
    ) -> Result<OwnedFd, FsError> {
        let fd = make_dir(parent, name, shown, mode)?;
        let st = fstat(&fd).map_err(failed(shown, "inspect"))?;
        self.created_dirs.push(Entry {
            parent: Rc::clone(parent),
            name: name.to_owned(),
            path: shown.to_owned(),
            id: NodeId::of(&st),
        });
        info!("created directory {} (mode {mode})", shown.display());
        Ok(fd)
    }

    /// Opens a directory inside `base` (fifod's `dir`), one component at a
    /// time from `base`'s fd: there, no symbolic link is followed, whoever
    /// owns it, and every directory passes `check_dir_is_safe`.
    fn open_below(
        &mut self,
        base: &Path,
        path: &Path,
        create: Option<Mode>,
    ) -> Result<Rc<OwnedFd>, FsError> {
        let mut current = self.open_dir(base, create)?;
        let mut shown = base.to_path_buf();
        let below = path.strip_prefix(base).unwrap_or(path);
        for name in components(below) {
            shown.push(&name);
            let opened = openat(
                current.as_fd(),
                name.as_os_str(),
                OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                NixMode::empty(),
            );
            let fd = match opened {
                Ok(fd) => {
                    let st = fstat(&fd).map_err(failed(&shown, "inspect"))?;
                    if is_kind(&st, SFlag::S_IFLNK) {
                        return Err(refused(
                            &shown,
                            "it is a symbolic link, which fifod never follows inside its dir",
                        ));
                    }
                    if !is_kind(&st, SFlag::S_IFDIR) {
                        return Err(refused(
                            &shown,
                            format!("it is {}, not a directory", file_kind(&st)),
                        ));
                    }
                    check_dir_is_safe(&shown, &st)?;
                    // One as fifod makes them below its dir (its user, its
                    // `dir_mode`: left by a fifod that was killed, say) is
                    // adopted: removed at stop if empty. One made otherwise
                    // (an admin's sticky directory) is left alone.
                    let id = NodeId::of(&st);
                    if create.is_some_and(|mode| st.st_mode & 0o7777 == mode.bits())
                        && st.st_uid == nix::unistd::geteuid().as_raw()
                        && !self.created_dirs.iter().any(|d| d.id == id)
                    {
                        self.created_dirs.push(Entry {
                            parent: Rc::clone(&current),
                            name: name.clone(),
                            path: shown.clone(),
                            id,
                        });
                    }
                    fd
                }
                Err(Errno::ENOENT) if let Some(mode) = create => {
                    self.create_dir(&current, &name, &shown, mode)?
                }
                Err(e) => return Err(failed(&shown, "open directory")(e)),
            };
            current = Rc::new(fd);
            self.dirs.insert(shown.clone(), Rc::clone(&current));
        }
        Ok(current)
    }

    /// Removes the FIFOs that `which` selects, the lock and the directories
    /// fifod created, each only if it still is the node fifod made.
    fn remove_paths(&mut self, which: impl Fn(&ManagedFifo) -> bool) {
        for fifo in self.fifos.iter().filter(|f| which(f)) {
            Footprint::remove_fifo(fifo);
        }
        self.remove_lock_and_dirs();
    }

    /// Removes one FIFO that is no longer configured, if it still is the
    /// node fifod made or adopted.
    pub fn remove_fifo(fifo: &ManagedFifo) {
        if fifo.passed {
            info!(
                "left fifo {} at {} in place: it belongs to the service manager",
                fifo.name,
                fifo.path.display()
            );
            return;
        }
        match fifo.entry.remove(UnlinkatFlags::NoRemoveDir) {
            Ok(()) => info!("removed fifo {} at {}", fifo.name, fifo.path.display()),
            Err(why) => warn!(
                "not removing {} (fifo {}): {why}",
                fifo.path.display(),
                fifo.name
            ),
        }
    }

    /// Removes every managed FIFO, the lock file and the directories fifod
    /// created (only if empty). Called once, at shutdown.
    pub fn remove(&mut self) {
        self.remove_paths(|_| true);
    }

    /// Undoes a start that failed after the footprint was made: what fifod
    /// created goes, what it adopted (it was there before) stays.
    pub fn undo_start(&mut self) {
        self.remove_paths(|fifo| !fifo.adopted);
    }

    fn remove_lock_and_dirs(&mut self) {
        if let Some(entry) = self.control_entry.take() {
            self.control = None;
            match entry.remove(UnlinkatFlags::NoRemoveDir) {
                Ok(()) => info!("removed control socket {}", entry.path.display()),
                Err(why) => warn!(
                    "not removing {} (control socket): {why}",
                    entry.path.display()
                ),
            }
        }
        if let Some((file, entry)) = self.lock.take() {
            if let Err(why) = entry.remove(UnlinkatFlags::NoRemoveDir) {
                warn!("not removing lock file {}: {why}", entry.path.display());
            }
            drop(file);
        }
        for dir in self.created_dirs.drain(..).rev() {
            match dir.remove(UnlinkatFlags::RemoveDir) {
                Ok(()) => info!("removed directory {}", dir.path.display()),
                Err(why) => info!("leaving directory {}: {why}", dir.path.display()),
            }
        }
    }
}

fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            std::path::Component::Normal(part) => Some(part.to_owned()),
            std::path::Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

/// FIFOs are only as safe as the directory that holds them: whoever may
/// rename entries in it can swap a FIFO for something else.
fn check_dir_is_safe(path: &Path, st: &FileStat) -> Result<(), FsError> {
    let euid = nix::unistd::geteuid().as_raw();
    if st.st_uid != euid && st.st_uid != 0 {
        return Err(refused(
            path,
            format!(
                "the directory is owned by uid {}, neither fifod's user nor root",
                st.st_uid
            ),
        ));
    }
    if st.st_mode & 0o002 != 0 && st.st_mode & 0o1000 == 0 {
        return Err(refused(
            path,
            "the directory is writable by everyone and has no sticky bit",
        ));
    }
    Ok(())
}

/// Makes a directory and sets its exact mode through its own fd: it is
/// created 0700 (so it is never wider than meant) and chmod'ed after.
fn make_dir(parent: &OwnedFd, name: &OsStr, shown: &Path, mode: Mode) -> Result<OwnedFd, FsError> {
    mkdirat(parent.as_fd(), name, NixMode::S_IRWXU).map_err(failed(shown, "create directory"))?;
    let fd = openat(
        parent.as_fd(),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        NixMode::empty(),
    )
    .map_err(failed(shown, "open directory"))?;
    fchmod(&fd, NixMode::from_bits_truncate(mode.bits()))
        .map_err(failed(shown, "set the mode of"))?;
    Ok(fd)
}

/// Creates the FIFO, or adopts one already there. A new node is made under
/// a private name in the same directory, opened, given its owner and mode,
/// and only then renamed into place (never over anything): no one can open
/// it before fifod holds it. An existing node is inspected through an
/// `O_PATH` handle (which opens nothing) and, if it is a FIFO fifod may
/// adopt, opened through that handle, never through its path.
fn open_fifo(parent: &Rc<OwnedFd>, spec: &FifoConfig) -> Result<ManagedFifo, FsError> {
    let path = spec.path.as_path();
    let name = path
        .file_name()
        .ok_or_else(|| refused(path, "no file name"))?;
    // Someone may make the path between our look and our rename: then it
    // is adopted (or refused) as if it had been there.
    for _ in 0..2 {
        if let Some(fifo) = adopt_fifo(parent, name, spec)? {
            return Ok(fifo);
        }
        if let Some(fifo) = create_fifo(parent, name, spec)? {
            return Ok(fifo);
        }
    }
    Err(refused(
        path,
        "something keeps appearing at this path while fifod makes its FIFO",
    ))
}

/// A name in `parent` for a node that is not in place yet: hidden, and
/// fifod's own (its pid and a count).
fn private_name() -> OsString {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    OsString::from(format!(".fifod-new-{}-{n}", std::process::id()))
}

/// Adopts the node at `name`, if there is one (`None` if there is none).
fn adopt_fifo(
    parent: &Rc<OwnedFd>,
    name: &OsStr,
    spec: &FifoConfig,
) -> Result<Option<ManagedFifo>, FsError> {
    let path = spec.path.as_path();
    let node = match openat(
        parent.as_fd(),
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        NixMode::empty(),
    ) {
        Ok(node) => node,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(failed(path, "inspect")(e)),
    };
    let before = fstat(&node).map_err(failed(path, "inspect"))?;
    check_adoptable(path, &before, spec)?;
    let fd = reopen_node(node.as_fd(), OFlag::O_RDWR).map_err(failed(path, "open FIFO"))?;
    let st = fstat(&fd).map_err(failed(path, "inspect"))?;
    if st.st_nlink != 1 {
        return Err(refused(path, format!("it has {} hard links", st.st_nlink)));
    }
    set_owner_and_mode(&fd, path, spec)?;
    info!(
        "adopted fifo {} at {} (mode {:04o} -> {}, owner {}:{})",
        spec.name,
        path.display(),
        before.st_mode & 0o7777,
        spec.mode,
        before.st_uid,
        before.st_gid
    );
    Ok(Some(ManagedFifo {
        name: spec.name.clone(),
        path: path.to_owned(),
        fd: Some(fd),
        node,
        adopted: true,
        passed: false,
        entry: Entry {
            parent: Rc::clone(parent),
            name: name.to_owned(),
            path: path.to_owned(),
            id: NodeId::of(&st),
        },
    }))
}

/// Makes a new FIFO at `name`: under a private name first, held open with
/// its owner and mode set, then renamed into place. `None` if something
/// took the path meanwhile (nothing is left behind then).
fn create_fifo(
    parent: &Rc<OwnedFd>,
    name: &OsStr,
    spec: &FifoConfig,
) -> Result<Option<ManagedFifo>, FsError> {
    let path = spec.path.as_path();
    let temp = private_name();
    // The umask is 077 while fifod runs, so the node starts private.
    mkfifoat(
        parent.as_fd(),
        temp.as_os_str(),
        NixMode::S_IRUSR | NixMode::S_IWUSR,
    )
    .map_err(failed(path, "create FIFO"))?;
    let made = fstatat(
        parent.as_fd(),
        temp.as_os_str(),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map(|st| NodeId::of(&st))
    .map_err(failed(path, "inspect"))?;
    let entry_at = |name: &OsStr| Entry {
        parent: Rc::clone(parent),
        name: name.to_owned(),
        path: path.to_owned(),
        id: made,
    };
    // Until it is in place, a failure removes it (if it is still ours).
    let undo = |e: FsError| {
        let _ = entry_at(&temp).remove(UnlinkatFlags::NoRemoveDir);
        e
    };
    let node = openat(
        parent.as_fd(),
        temp.as_os_str(),
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        NixMode::empty(),
    )
    .map_err(|e| undo(failed(path, "open FIFO")(e)))?;
    let st = fstat(&node).map_err(|e| undo(failed(path, "inspect")(e)))?;
    if !is_kind(&st, SFlag::S_IFIFO) || NodeId::of(&st) != made || st.st_nlink != 1 {
        return Err(undo(refused(
            path,
            "its new node was replaced while fifod made it",
        )));
    }
    let fd =
        reopen_node(node.as_fd(), OFlag::O_RDWR).map_err(|e| undo(failed(path, "open FIFO")(e)))?;
    set_owner_and_mode(&fd, path, spec).map_err(undo)?;
    match move_into_place(parent, &temp, name) {
        Ok(()) => {}
        Err(Errno::EEXIST) => {
            let _ = entry_at(&temp).remove(UnlinkatFlags::NoRemoveDir);
            return Ok(None);
        }
        Err(e) => return Err(undo(failed(path, "create FIFO")(e))),
    }
    info!(
        "created fifo {} at {} (mode {})",
        spec.name,
        path.display(),
        spec.mode
    );
    Ok(Some(ManagedFifo {
        name: spec.name.clone(),
        path: path.to_owned(),
        fd: Some(fd),
        node,
        adopted: false,
        passed: false,
        entry: entry_at(name),
    }))
}

/// Renames `temp` to `name` in `parent` without replacing anything there
/// (`EEXIST` if something is); where the filesystem cannot rename that
/// way, links the node at `name` and removes `temp`.
fn move_into_place(parent: &OwnedFd, temp: &OsStr, name: &OsStr) -> nix::Result<()> {
    match rename_noreplace(parent.as_fd(), temp, name) {
        Err(Errno::EINVAL | Errno::ENOSYS) => {}
        done => return done,
    }
    nix::unistd::linkat(
        parent.as_fd(),
        temp,
        parent.as_fd(),
        name,
        nix::fcntl::AtFlags::empty(),
    )?;
    unlinkat(parent.as_fd(), temp, UnlinkatFlags::NoRemoveDir)
}

/// Renames `from` to `to` in `dir` unless something is at `to` (`EEXIST`);
/// `EINVAL` or `ENOSYS` where the filesystem or the system cannot.
fn rename_noreplace(dir: BorrowedFd<'_>, from: &OsStr, to: &OsStr) -> nix::Result<()> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    return nix::fcntl::renameat2(
        dir,
        from,
        dir,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    );
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = (dir, from, to);
        Err(Errno::ENOSYS)
    }
}

/// Owner first (chown may clear set-id bits), then the exact mode.
fn set_owner_and_mode(fd: &OwnedFd, path: &Path, spec: &FifoConfig) -> Result<(), FsError> {
    if spec.owner.is_some() || spec.group.is_some() {
        fchown(
            fd,
            spec.owner.map(Uid::from_raw),
            spec.group.map(Gid::from_raw),
        )
        .map_err(failed(path, "change the owner of"))?;
    }
    fchmod(fd, NixMode::from_bits_truncate(spec.mode.bits()))
        .map_err(failed(path, "set the mode of"))
}

/// Takes a FIFO the service manager passed (socket activation) as `spec`,
/// once sure it is the node at the configured path.
fn take_passed(
    parent: &Rc<OwnedFd>,
    spec: &FifoConfig,
    fd: OwnedFd,
) -> Result<ManagedFifo, FsError> {
    let path = spec.path.as_path();
    let name = path
        .file_name()
        .ok_or_else(|| refused(path, "no file name"))?;
    let st = fstat(&fd).map_err(failed(path, "inspect"))?;
    let id = NodeId::of(&st);
    match fstatat(parent.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(at) if NodeId::of(&at) == id => {}
        Ok(_) | Err(Errno::ENOENT) => {
            return Err(refused(
                path,
                format!(
                    "the FIFO passed as \"{}\" is not the one at this path: \
                     ListenFIFO= and the config's path must name the same file",
                    spec.name
                ),
            ));
        }
        Err(e) => return Err(failed(path, "inspect")(e)),
    }
    let flags = OFlag::from_bits_truncate(
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).map_err(failed(path, "inspect"))?,
    );
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
    )
    .map_err(failed(path, "set non-blocking"))?;
    info!(
        "fifo {} at {}: passed by the service manager (mode {:04o}, left as the socket unit set it)",
        spec.name,
        path.display(),
        st.st_mode & 0o7777
    );
    let node = node_handle(fd.as_fd()).map_err(failed(path, "inspect"))?;
    Ok(ManagedFifo {
        name: spec.name.clone(),
        path: path.to_owned(),
        fd: Some(fd),
        node,
        adopted: true,
        passed: true,
        entry: Entry {
            parent: Rc::clone(parent),
            name: name.to_owned(),
            path: path.to_owned(),
            id,
        },
    })
}

/// Refuses `st` unless it is a node of `kind` with one link (a second link
/// would be a name fifod does not control). `subject` starts the reason.
fn check_single(path: &Path, st: &FileStat, kind: SFlag, subject: &str) -> Result<(), FsError> {
    if !is_kind(st, kind) {
        let mut reason = format!("{subject} is {}", file_kind(st));
        if kind == SFlag::S_IFIFO {
            reason.push_str(", not a FIFO");
        }
        if is_kind(st, SFlag::S_IFLNK) {
            reason.push_str(" (fifod never follows symbolic links)");
        }
        return Err(refused(path, reason));
    }
    if st.st_nlink != 1 {
        return Err(refused(
            path,
            format!("{subject} has {} hard links", st.st_nlink),
        ));
    }
    Ok(())
}

/// A node left at a FIFO path (by a crash, or by an admin) is adopted only if
/// it is a FIFO with one link, owned by us or by the configured owner.
fn check_adoptable(path: &Path, st: &FileStat, spec: &FifoConfig) -> Result<(), FsError> {
    check_single(path, st, SFlag::S_IFIFO, "it")?;
    let euid = nix::unistd::geteuid().as_raw();
    if st.st_uid != euid && Some(st.st_uid) != spec.owner {
        return Err(refused(
            path,
            format!(
                "it is a FIFO owned by uid {}, neither fifod's user nor the configured owner",
                st.st_uid
            ),
        ));
    }
    Ok(())
}

/// Creates the control socket, mode 0600. A socket of ours already there was
/// left by a crash (the lock is ours, so no fifod uses it) and is replaced;
/// anything else at the path is refused.
fn bind_control(
    parent: &Rc<OwnedFd>,
    path: &Path,
    group: Option<u32>,
) -> Result<(UnixListener, Entry), FsError> {
    let name = path
        .file_name()
        .ok_or_else(|| refused(path, "no file name"))?;
    match fstatat(parent.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if is_kind(&st, SFlag::S_IFSOCK) && st.st_uid == nix::unistd::geteuid().as_raw() => {
            unlinkat(parent.as_fd(), name, UnlinkatFlags::NoRemoveDir)
                .map_err(failed(path, "remove the stale socket"))?;
            info!("removed a stale control socket at {}", path.display());
        }
        Ok(st) => {
            return Err(refused(
                path,
                format!("it is {}, not fifod's control socket", file_kind(&st)),
            ));
        }
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(failed(path, "inspect")(e)),
    }
    // There is no bindat(2): bind by name from inside the directory, whose
    // fd was resolved safely, rather than through the path again.
    let here = openat(
        nix::fcntl::AT_FDCWD,
        ".",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        NixMode::empty(),
    )
    .map_err(failed(Path::new("."), "open the working directory"))?;
    nix::unistd::fchdir(parent.as_fd()).map_err(failed(path, "enter the directory of"))?;
    let old_umask = nix::sys::stat::umask(NixMode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(name);
    nix::sys::stat::umask(old_umask);
    if let Err(e) = nix::unistd::fchdir(here.as_fd()) {
        warn!("cannot return to the working directory: {}", e.desc());
    }
    let listener = bound.map_err(|e| {
        failed(path, "create the control socket")(Errno::from_raw(e.raw_os_error().unwrap_or(0)))
    })?;
    let st = fstatat(parent.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(failed(path, "inspect"))?;
    let entry = Entry {
        parent: Rc::clone(parent),
        name: name.to_owned(),
        path: path.to_owned(),
        id: NodeId::of(&st),
    };
    if let Err(e) = listener.set_nonblocking(true) {
        let _ = entry.remove(UnlinkatFlags::NoRemoveDir);
        return Err(failed(path, "configure")(Errno::from_raw(
            e.raw_os_error().unwrap_or(0),
        )));
    }
    // `control_group` may connect too: the socket becomes its, mode 0660.
    // By name, in a directory only fifod's user can write to.
    if let Some(gid) = group {
        let opened = nix::unistd::fchownat(
            parent.as_fd(),
            name,
            None,
            Some(Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .and_then(|()| {
            nix::sys::stat::fchmodat(
                parent.as_fd(),
                name,
                NixMode::from_bits_truncate(0o660),
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )
        });
        if let Err(e) = opened {
            let _ = entry.remove(UnlinkatFlags::NoRemoveDir);
            return Err(failed(path, "give the control socket to control_group")(e));
        }
    }
    Ok((listener, entry))
}

/// Only a regular file of fifod's user, with one link, can be the lock.
fn check_lock_file(path: &Path, st: &FileStat) -> Result<(), FsError> {
    check_single(path, st, SFlag::S_IFREG, "the lock file")?;
    if st.st_uid != nix::unistd::geteuid().as_raw() {
        return Err(refused(
            path,
            format!(
                "the lock file is owned by uid {}, not by fifod's user",
                st.st_uid
            ),
        ));
    }
    Ok(())
}

/// Takes the per-directory lock: an flock on `.fifod.lock`, which holds the
/// holder's pid. A crash releases an flock; a stale pid file alone would not.
fn take_lock(dir: &Rc<OwnedFd>, dir_path: &Path) -> Result<(File, Entry), FsError> {
    let path = dir_path.join(LOCK_FILE_NAME);
    // The holder unlinks the file as it stops: if it did so between our open
    // and our lock, we hold a lock on a file nobody else sees. Try again.
    for _ in 0..3 {
        // Inspected before it is opened: nothing but a regular file of
        // fifod's user, with one link, is ever opened as the lock.
        let create = match fstatat(dir.as_fd(), LOCK_FILE_NAME, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => {
                check_lock_file(&path, &st)?;
                OFlag::empty()
            }
            Err(Errno::ENOENT) => OFlag::O_CREAT | OFlag::O_EXCL,
            Err(e) => return Err(failed(&path, "inspect")(e)),
        };
        let fd = match openat(
            dir.as_fd(),
            LOCK_FILE_NAME,
            OFlag::O_RDWR
                | create
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_NOCTTY
                | OFlag::O_CLOEXEC,
            NixMode::S_IRUSR | NixMode::S_IWUSR,
        ) {
            Ok(fd) => fd,
            // It came or went between the look and the open: look again.
            Err(Errno::EEXIST | Errno::ENOENT) => continue,
            Err(Errno::ELOOP) => {
                return Err(refused(&path, "the lock file is a symbolic link"));
            }
            Err(e) => return Err(failed(&path, "open lock file")(e)),
        };
        let st = fstat(&fd).map_err(failed(&path, "inspect"))?;
        check_lock_file(&path, &st)?;
        let mut file = File::from(fd);
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(FsError::Locked {
                    dir: dir_path.to_owned(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(failed(&path, "lock")(Errno::from_raw(
                    e.raw_os_error().unwrap_or(0),
                )));
            }
        }
        let still_there = fstatat(dir.as_fd(), LOCK_FILE_NAME, AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|now| NodeId::of(&now) == NodeId::of(&st));
        if !still_there {
            continue;
        }
        let pid = format!("{}\n", std::process::id());
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()));
        written.map_err(|e| {
            failed(&path, "write lock file")(Errno::from_raw(e.raw_os_error().unwrap_or(0)))
        })?;
        let _ = fchmod(file.as_fd(), NixMode::from_bits_truncate(0o644));
        let entry = Entry {
            parent: Rc::clone(dir),
            name: OsString::from(LOCK_FILE_NAME),
            path,
            id: NodeId::of(&st),
        };
        return Ok((file, entry));
    }
    Err(refused(&path, "the lock file keeps being replaced"))
}

/// How to open a managed FIFO again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read-only: as an input, it reports hang-up once its writers have all
    /// gone; as a spare fd on an output, it keeps the pipe and its bytes
    /// alive without counting as a writer.
    Read,
    /// Read-write: never sees EOF nor EPIPE.
    ReadWrite,
    /// Write-only, on an output that has a reader already (fifod's own
    /// read-write fd, say): it then tells whether anyone else reads
    /// ([`crate::pipe::has_reader`]).
    Write,
}

/// Two FIFOs of the config are one node (their paths meet through a
/// symbolic link above `dir`): each would feed the other.
pub fn one_node(fifo: &ManagedFifo, other: &ManagedFifo) -> FsError {
    refused(
        &fifo.path,
        format!(
            "it is the same node as fifo {} ({}): two FIFOs that are one node would feed \
             each other",
            other.name,
            other.path.display()
        ),
    )
}

impl ManagedFifo {
    /// The node it is: two managed FIFOs must never share one.
    pub fn node_id(&self) -> NodeId {
        self.entry.id
    }

    /// The read-write fd opened at start, if the daemon has not taken it.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(AsFd::as_fd)
    }

    /// Whether the path still names the node fifod made or adopted.
    pub fn in_place(&self) -> bool {
        fstatat(
            self.entry.parent.as_fd(),
            self.entry.name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok_and(|st| NodeId::of(&st) == self.entry.id)
    }

    /// Makes sure the FIFO holds a read-write fd of its own (it is in no
    /// route after a reload, and must still never block nor lose a byte).
    pub fn hold(&mut self) -> Result<(), FsError> {
        if self.fd.is_none() {
            self.fd = Some(self.reopen(Access::ReadWrite)?);
        }
        Ok(())
    }

    /// Hands the read-write fd opened at start to the caller.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fd.take()
    }

    /// Gives the FIFO the mode, owner and group of `spec` if it has others
    /// (a reload changed them), through an fd on the node itself, never the
    /// path. Returns what changed, for the log.
    pub fn set_attributes(&self, spec: &FifoConfig) -> Result<Vec<String>, FsError> {
        if self.passed {
            return Ok(Vec::new());
        }
        // A reader that comes and goes disturbs neither side of the pipe.
        let fd = self.reopen(Access::Read)?;
        let st = fstat(&fd).map_err(failed(&self.path, "inspect"))?;
        let mut changed = Vec::new();
        let owner = spec.owner.filter(|&uid| uid != st.st_uid);
        let group = spec.group.filter(|&gid| gid != st.st_gid);
        if owner.is_some() || group.is_some() {
            fchown(&fd, owner.map(Uid::from_raw), group.map(Gid::from_raw))
                .map_err(failed(&self.path, "change the owner of"))?;
            if let Some(uid) = owner {
                changed.push(format!("owner {} -> {uid}", st.st_uid));
            }
            if let Some(gid) = group {
                changed.push(format!("group {} -> {gid}", st.st_gid));
            }
        }
        // chown may clear set-id bits: set the mode after it, always.
        if owner.is_some() || group.is_some() || st.st_mode & 0o7777 != spec.mode.bits() {
            fchmod(&fd, NixMode::from_bits_truncate(spec.mode.bits()))
                .map_err(failed(&self.path, "set the mode of"))?;
            if st.st_mode & 0o7777 != spec.mode.bits() {
                changed.push(format!("mode {:04o} -> {}", st.st_mode & 0o7777, spec.mode));
            }
        }
        Ok(changed)
    }

    /// Opens the FIFO again, non-blocking, and only if the path still names
    /// the node fifod made or adopted.
    pub fn reopen(&self, access: Access) -> Result<OwnedFd, FsError> {
        let mode = match access {
            Access::Read => OFlag::O_RDONLY,
            Access::ReadWrite => OFlag::O_RDWR,
            Access::Write => OFlag::O_WRONLY,
        };
        let fd = reopen_node(self.node.as_fd(), mode).map_err(failed(&self.path, "open FIFO"))?;
        let st = fstat(&fd).map_err(failed(&self.path, "inspect"))?;
        if NodeId::of(&st) != self.entry.id {
            return Err(refused(
                &self.path,
                "it is no longer the FIFO fifod made (replaced by someone else)",
            ));
        }
        Ok(fd)
    }
}

/// Opens the node `handle` is on (an `O_PATH` handle, or any fd) anew,
/// through `/proc/self/fd`: the same inode, whatever its path names now,
/// or no path at all. Never blocks, never becomes a controlling terminal.
pub fn reopen_node(handle: BorrowedFd<'_>, access: OFlag) -> nix::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    nix::fcntl::open(
        format!("/proc/self/fd/{}", handle.as_raw_fd()).as_str(),
        access | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        NixMode::empty(),
    )
}

/// An `O_PATH` handle on the node `fd` is open on.
fn node_handle(fd: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    reopen_node(fd, OFlag::O_PATH)
}
