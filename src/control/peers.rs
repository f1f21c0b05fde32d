//! Who has a FIFO open, for `fifod status`: it looks through /proc, as far
//! as its caller may, for the fds that name the node (device and inode) at
//! each FIFO's path, and reads how each was opened from its `fdinfo`. The
//! daemon does not look: a scan of every process would cost the loop, and
//! would show what fifod's user may see rather than what the caller may.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use serde::{Deserialize, Deserializer};

use super::{Access, Peer, Status};

/// A FIFO's PEERS cell lists at most this many processes, then how many
/// more there are.
const LISTED: usize = 3;
/// `PF_KTHREAD` in the flags of `/proc/PID/stat`: a kernel thread, which
/// holds no files.
const PF_KTHREAD: u64 = 0x0020_0000;

/// A node: `(st_dev, st_ino)`.
type Node = (u64, u64);

/// Fills in every FIFO's `peers` and the document's
/// `processes_not_visible` from /proc, leaving out the daemon (`daemon`:
/// its pid as this process sees it) and this process (which holds a FIFO
/// only if it inherited it from whoever started it, who is listed). A FIFO
/// whose path is not a FIFO now (removed, say, while fifod makes it again)
/// gets `None`, as do all of them if /proc cannot be read.
pub fn find(status: &mut Status, daemon: i32) {
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    find_in(Path::new("/proc"), status, &[daemon, me]);
}

fn find_in(proc: &Path, status: &mut Status, left_out: &[i32]) {
    // The path's own node: a symbolic link swapped in there is not
    // followed.
    let nodes: Vec<Option<Node>> = status
        .fifos
        .iter()
        .map(|f| match fs::symlink_metadata(&f.path) {
            Ok(meta) if meta.file_type().is_fifo() => Some((meta.dev(), meta.ino())),
            _ => None,
        })
        .collect();
    let wanted: HashSet<Node> = nodes.iter().flatten().copied().collect();
    let scan = scan(proc, &wanted, left_out);
    for (fifo, node) in status.fifos.iter_mut().zip(nodes) {
        fifo.peers = match (&scan, node) {
            (Ok(scan), Some(node)) => Some(scan.peers.get(&node).cloned().unwrap_or_default()),
            _ => None,
        };
    }
    status.processes_not_visible = scan.ok().map(|s| s.not_visible);
}

/// What a pass over /proc found.
#[derive(Debug, Default)]
struct Scan {
    /// The processes that hold each wanted node, by pid.
    peers: HashMap<Node, Vec<Peer>>,
    /// Processes whose fds could not be listed.
    not_visible: u64,
}

fn scan(proc: &Path, wanted: &HashSet<Node>, left_out: &[i32]) -> io::Result<Scan> {
    let mut found = Scan::default();
    if wanted.is_empty() {
        return Ok(found);
    }
    for entry in fs::read_dir(proc)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if left_out.contains(&pid) {
            continue;
        }
        let dir = entry.path();
        let fds = match fs::read_dir(dir.join("fd")) {
            Ok(fds) => fds,
            // It exited meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            // Another user's (or one that may not be traced): only the
            // processes that could hold a FIFO count.
            Err(_) => {
                if may_hold_files(&dir) {
                    found.not_visible += 1;
                }
                continue;
            }
        };
        let mut held: HashMap<Node, Access> = HashMap::new();
        for fd in fds.flatten() {
            // stat follows the fd's link to the open file itself, whatever
            // its path is now; nothing else is followed.
            let Ok(meta) = fs::metadata(fd.path()) else {
                continue;
            };
            let node = (meta.dev(), meta.ino());
            if !meta.file_type().is_fifo() || !wanted.contains(&node) {
                continue;
            }
            let Some(access) = access(&dir.join("fdinfo").join(fd.file_name())) else {
                continue;
            };
            held.entry(node)
                .and_modify(|a| *a = a.with(access))
                .or_insert(access);
        }
        if held.is_empty() {
            continue;
        }
        let command = fs::read_to_string(dir.join("comm"))
            .map(|c| c.strip_suffix('\n').unwrap_or(&c).to_string())
            .unwrap_or_default();
        for (node, mode) in held {
            found.peers.entry(node).or_default().push(Peer {
                pid,
                command: command.clone(),
                mode,
            });
        }
    }
    for peers in found.peers.values_mut() {
        peers.sort_by_key(|p| p.pid);
    }
    Ok(found)
}

/// How an fd was opened, from the `flags:` line (octal) of its `fdinfo`.
fn access(fdinfo: &Path) -> Option<Access> {
    let text = fs::read_to_string(fdinfo).ok()?;
    let flags = text.lines().find_map(|l| l.strip_prefix("flags:"))?.trim();
    let flags = i32::from_str_radix(flags, 8).ok()?;
    match flags & libc::O_ACCMODE {
        libc::O_RDONLY => Some(Access::Read),
        libc::O_WRONLY => Some(Access::Write),
        libc::O_RDWR => Some(Access::ReadWrite),
        _ => None,
    }
}

/// Whether the process of `/proc/PID` could have files open: neither a
/// kernel thread nor a zombie (nor gone).
fn may_hold_files(dir: &Path) -> bool {
    let Ok(stat) = fs::read_to_string(dir.join("stat")) else {
        return false;
    };
    // `pid (comm) state ppid pgrp session tty_nr tpgid flags ...`; the
    // command may hold anything, parentheses included.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return true;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let zombie = matches!(fields.first(), Some(&("Z" | "X" | "x")));
    let kernel = fields
        .get(6)
        .and_then(|f| f.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_KTHREAD != 0);
    !zombie && !kernel
}

/// A FIFO's PEERS cell: `cat[1234] r, app[99] w`, `+N more` past a few;
/// `-` for nobody, `?` where nobody looked.
pub fn cell(peers: Option<&[Peer]>) -> String {
    let Some(peers) = peers else {
        return "?".into();
    };
    if peers.is_empty() {
        return "-".into();
    }
    let mut listed: Vec<String> = peers
        .iter()
        .take(LISTED)
        .map(|p| {
            let mode = match p.mode {
                Access::Read => "r",
                Access::Write => "w",
                Access::ReadWrite => "rw",
            };
            // A process names itself: no control character of its choice
            // reaches the terminal.
            let command: String = p
                .command
                .chars()
                .map(|c| {
                    if c.is_control() {
                        c.escape_default().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect();
            format!("{command}[{}] {mode}", p.pid)
        })
        .collect();
    if peers.len() > LISTED {
        listed.push(format!("+{} more", peers.len() - LISTED));
    }
    listed.join(", ")
}

/// `peers` as documents have it: an array, or `null` (a daemon's answer;
/// daemons before the array answered `null` or, in principle, a bool).
pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Peer>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Field {
        Listed(Vec<Peer>),
        // Whatever it said, it did not say who.
        NotListed(#[allow(dead_code)] Option<bool>),
    }
    Ok(match Field::deserialize(d)? {
        Field::Listed(peers) => Some(peers),
        Field::NotListed(_) => None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    use nix::sys::stat::Mode;

    use super::*;
    use crate::control::{FifoStatus, STATUS_VERSION};

    fn fifo(name: &str, path: &Path) -> FifoStatus {
        FifoStatus {
            name: name.into(),
            path: path.display().to_string(),
            mode: "0600".into(),
            role: "input".into(),
            peers: None,
            bytes: 0,
            queued: 0,
        }
    }

    /// A made-up `/proc/PID`: `fds` are (fd, what it links to, `flags`
    /// in octal), `stat` what follows the command in its `stat`; `None`
    /// for `fds` makes `fd` unreadable (a file where the directory was).
    fn process(proc: &Path, pid: &str, comm: &str, stat: &str, fds: Option<&[(u32, &Path, &str)]>) {
        let dir = proc.join(pid);
        fs::create_dir_all(dir.join("fdinfo")).unwrap();
        fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
        fs::write(dir.join("stat"), format!("{pid} ({comm}) {stat}\n")).unwrap();
        match fds {
            None => fs::write(dir.join("fd"), "").unwrap(),
            Some(fds) => {
                fs::create_dir(dir.join("fd")).unwrap();
                for (fd, target, flags) in fds {
                    symlink(target, dir.join("fd").join(fd.to_string())).unwrap();
                    fs::write(
                        dir.join("fdinfo").join(fd.to_string()),
                        format!("pos:\t0\nflags:\t{flags}\nmnt_id:\t25\nino:\t1\n"),
                    )
                    .unwrap();
                }
            }
        }
    }

    #[test]
    fn finds_who_has_each_fifo_open_and_how() {
        let tmp = tempfile::tempdir().unwrap();
        let node = |name: &str| -> PathBuf {
            let path = tmp.path().join(name);
            nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600)).unwrap();
            path
        };
        let (a, b, idle) = (node("a"), node("b"), node("idle"));
        let gone = tmp.path().join("gone");
        let file = tmp.path().join("file");
        fs::write(&file, "").unwrap();
        let proc = tmp.path().join("proc");
        let running = "S 1 1 1 0 -1 4194560 0 0";
        // Reads `a` through one fd and writes it through another.
        process(
            &proc,
            "100",
            "cat",
            running,
            Some(&[(3, &a, "0100000"), (4, &a, "02100001"), (5, &file, "0")]),
        );
        process(&proc, "20", "my app", running, Some(&[(0, &b, "02000001")]));
        process(&proc, "7", "tee", running, Some(&[(9, &a, "0100002")]));
        // The daemon and `fifod status` itself: left out.
        process(&proc, "300", "fifod", running, Some(&[(5, &a, "0100002")]));
        process(&proc, "301", "fifod", running, Some(&[(7, &b, "01")]));
        // Not visible: counted, unless it holds no files.
        process(&proc, "400", "sshd", running, None);
        process(&proc, "401", "a) Z (b", running, None);
        process(
            &proc,
            "500",
            "kworker/0:1",
            "I 2 0 0 0 -1 69238880 0 0",
            None,
        );
        process(&proc, "600", "defunct", "Z 1 1 1 0 -1 4194564 0 0", None);
        fs::create_dir_all(proc.join("self")).unwrap();

        let mut status = Status {
            version: STATUS_VERSION,
            pid: 1,
            uptime_seconds: 1.0,
            dir: "/run/fifod".into(),
            state: "running".into(),
            last_reload: None,
            reload_requests: 0,
            upgrades: 0,
            upgrade_failures: 0,
            upgrade_error: None,
            fifos: vec![
                fifo("a", &a),
                fifo("b", &b),
                fifo("idle", &idle),
                fifo("gone", &gone),
                fifo("file", &file),
            ],
            processes: Vec::new(),
            routes: Vec::new(),
            processes_not_visible: None,
        };
        find_in(&proc, &mut status, &[300, 301]);
        let peer = |pid, command: &str, mode| Peer {
            pid,
            command: command.into(),
            mode,
        };
        let peers: Vec<Option<Vec<Peer>>> = status.fifos.iter().map(|f| f.peers.clone()).collect();
        assert_eq!(
            peers,
            [
                Some(vec![
                    peer(7, "tee", Access::ReadWrite),
                    peer(100, "cat", Access::ReadWrite),
                ]),
                Some(vec![peer(20, "my app", Access::Write)]),
                Some(Vec::new()),
                None,
                None,
            ]
        );
        assert_eq!(status.processes_not_visible, Some(2));

        // Without /proc, nothing is known.
        find_in(&tmp.path().join("nowhere"), &mut status, &[300]);
        assert!(status.fifos.iter().all(|f| f.peers.is_none()));
        assert_eq!(status.processes_not_visible, None);
    }

    #[test]
    fn cell_lists_a_few_then_counts() {
        let peer = |pid, command: &str, mode| Peer {
            pid,
            command: command.into(),
            mode,
        };
        assert_eq!(cell(None), "?");
        assert_eq!(cell(Some(&[])), "-");
        assert_eq!(
            cell(Some(&[
                peer(1234, "cat", Access::Read),
                peer(99, "app", Access::Write)
            ])),
            "cat[1234] r, app[99] w"
        );
        let many: Vec<Peer> = (1..=5)
            .map(|pid| peer(pid, "x\x1b[2J", Access::ReadWrite))
            .collect();
        assert_eq!(
            cell(Some(&many)),
            "x\\u{1b}[2J[1] rw, x\\u{1b}[2J[2] rw, x\\u{1b}[2J[3] rw, +2 more"
        );
    }

    #[test]
    fn peers_parse_as_an_array_or_null_and_may_be_absent() {
        let parse = |json: &str| -> Option<Vec<Peer>> {
            let mut f = serde_json::to_value(fifo("a", Path::new("/a"))).unwrap();
            let object = f.as_object_mut().unwrap();
            match json {
                "absent" => {
                    object.remove("peers");
                }
                _ => {
                    object.insert("peers".into(), serde_json::from_str(json).unwrap());
                }
            }
            serde_json::from_value::<FifoStatus>(f).unwrap().peers
        };
        assert_eq!(parse("null"), None);
        assert_eq!(parse("absent"), None);
        assert_eq!(parse("true"), None);
        assert_eq!(parse("[]"), Some(Vec::new()));
        assert_eq!(
            parse(r#"[{"pid": 5, "command": "cat", "mode": "read-write"}]"#),
            Some(vec![Peer {
                pid: 5,
                command: "cat".into(),
                mode: Access::ReadWrite
            }])
        );
    }
}
