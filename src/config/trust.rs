//! Whoever can change the config decides which commands fifod runs, and as
//! whom: as root, that is root's power. So a config that a user other than
//! root or fifod's own could change, or replace, is refused before it is
//! read, the way sudo, sshd and cron refuse theirs.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::unistd::geteuid;

/// The sticky bit, and the write bits of group and others.
const STICKY: u32 = 0o1000;
const WRITABLE_BY_OTHERS: u32 = 0o022;

/// Checks that only root and fifod's user can change the file at `path`:
/// the file (where a symbolic link leads) and every directory above it must
/// be theirs, and writable by nobody else (a directory with the sticky bit,
/// such as /tmp, may be: nobody else can rename or remove what is theirs in
/// it). Returns why not.
pub fn check_trusted(path: &Path) -> Result<(), String> {
    let me = geteuid().as_raw();
    let trusted = |uid: u32| uid == 0 || uid == me;
    let real = fs::canonicalize(path).map_err(|e| e.to_string())?;
    let meta = fs::metadata(&real).map_err(|e| e.to_string())?;
    let whose = |uid: u32| {
        if me == 0 {
            format!("belongs to uid {uid}, not root")
        } else {
            format!("belongs to uid {uid}, neither root nor fifod's user (uid {me})")
        }
    };
    if !trusted(meta.uid()) {
        return Err(format!(
            "{}{}: another user could change what fifod runs (chown it)",
            shown(&real, path),
            whose(meta.uid())
        ));
    }
    if meta.mode() & WRITABLE_BY_OTHERS != 0 {
        return Err(format!(
            "{}is writable by its group or by others (mode {:04o}): they could change what \
             fifod runs (chmod go-w it)",
            shown(&real, path),
            meta.mode() & 0o7777
        ));
    }
    for dir in real.ancestors().skip(1) {
        let meta = fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if !trusted(meta.uid()) {
            return Err(format!(
                "its directory {} {}: another user could replace the config",
                dir.display(),
                whose(meta.uid())
            ));
        }
        if meta.mode() & WRITABLE_BY_OTHERS != 0 && meta.mode() & STICKY == 0 {
            return Err(format!(
                "its directory {} is writable by its group or by others (mode {:04o}) \
                 without the sticky bit: they could replace the config",
                dir.display(),
                meta.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

/// Names where a symbolic link led, when it did.
fn shown(real: &Path, path: &Path) -> String {
    if real == path {
        String::new()
    } else {
        format!("(through a symbolic link, {}) ", real.display())
    }
}
