//! A private, real systemd to try the shipped units under: the machine's own
//! systemd, booted by `init.sh` as PID 1 of fresh pid, mount, uts, ipc, net
//! and cgroup namespaces, in a cgroup of its own. Nothing it does reaches the
//! host's files (see init.sh); dropping the `Machine` kills its PID 1, which
//! ends every process of the namespace, and removes the cgroup.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::common::{wait_child, wait_until};

/// Set by CI where the machine can boot a private systemd: a test that
/// cannot then fails instead of saying that it was skipped.
const REQUIRE: &str = "FIFOD_TEST_REAL_SYSTEMD";
/// Deadline for booting, and for every command run inside.
pub const DEADLINE: Duration = Duration::from_secs(60);
const INSIDE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug)]
pub struct Machine {
    /// `sh`, then `unshare` (one pid): the parent of the namespace's PID 1.
    unshare: Child,
    /// The host pid of the namespace's PID 1 (init.sh, then systemd).
    init: Pid,
    cgroup: PathBuf,
    /// Holds init.sh's mount point and the console log.
    state: TempDir,
    /// Shown read-only inside at /run/host-share.
    share: TempDir,
    console: Option<JoinHandle<()>>,
    /// Our copy of the console's terminal, so that it never hangs up while
    /// the namespace changes hands from init.sh to systemd.
    terminal: Option<OwnedFd>,
    /// The systemd version (the first number of `systemctl --version`).
    pub version: u32,
}

/// What a command inside printed, and how it ended.
#[derive(Debug)]
pub struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Machine {
    /// Boots a private systemd, or says why this machine cannot (`None`,
    /// after printing the reason), unless CI requires it.
    pub fn boot(test: &str) -> Option<Machine> {
        let reason = match unavailable() {
            None => match Machine::try_boot() {
                Ok(machine) => return Some(machine),
                Err(e) => format!("the private systemd did not boot: {e}"),
            },
            Some(reason) => reason,
        };
        if std::env::var_os(REQUIRE).is_some() {
            panic!("{test}: {reason} (and {REQUIRE} is set)");
        }
        println!("note: skipped: {test} needs a private systemd: {reason}");
        None
    }

    fn try_boot() -> Result<Machine, String> {
        let root = cgroup2_root().ok_or("no cgroup2 hierarchy")?;
        let state = tempfile::Builder::new()
            .prefix("fifod-systemd.")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let share = tempfile::Builder::new()
            .prefix("fifod-share.")
            .tempdir()
            .map_err(|e| e.to_string())?;
        fs::create_dir(state.path().join("stage")).map_err(|e| e.to_string())?;
        let init_sh = state.path().join("init.sh");
        fs::write(&init_sh, include_str!("init.sh")).map_err(|e| e.to_string())?;
        let cgroup = root.join(format!(
            "fifod-test-{}-{}",
            std::process::id(),
            state
                .path()
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("x")
        ));
        fs::create_dir(&cgroup).map_err(|e| format!("mkdir {}: {e}", cgroup.display()))?;
        // The cgroup is made: from here on, a failure goes through Drop.
        let pty = open_pty().map_err(|e| format!("a pseudo-terminal: {e}"))?;
        let stdio = |fd: &OwnedFd| fd.try_clone().map(Stdio::from).map_err(|e| e.to_string());
        let mut cmd = Command::new("/bin/sh");
        cmd.args([
            "-c",
            r#"echo $$ > "$1/cgroup.procs" && exec unshare --pid --fork --kill-child \
                --mount --propagation private --uts --ipc --net --cgroup --mount-proc \
                /bin/sh "$2" "$3" "$4""#,
            "sh",
        ])
        .arg(&cgroup)
        .arg(&init_sh)
        .arg(state.path())
        .arg(share.path())
        .env_clear()
        .env("PATH", INSIDE_PATH)
        .stdin(stdio(&pty.slave)?)
        .stdout(stdio(&pty.slave)?)
        .stderr(stdio(&pty.slave)?)
        .process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork
        // and exec. The namespace dies with the test (unshare --kill-child
        // takes it down with unshare).
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                Ok(())
            });
        }
        let unshare = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = fs::remove_dir(&cgroup);
                return Err(format!("spawn unshare: {e}"));
            }
        };
        let log_path = state.path().join("console.log");
        let mut log = File::create(&log_path).map_err(|e| e.to_string())?;
        let mut master = File::from(pty.master);
        let console = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once every copy of the terminal is closed.
            while let Ok(n @ 1..) = master.read(&mut buf) {
                let _ = log.write_all(&buf[..n]);
            }
        });
        let mut machine = Machine {
            init: Pid::from_raw(0),
            unshare,
            cgroup,
            state,
            share,
            console: Some(console),
            terminal: Some(pty.slave),
            version: 0,
        };
        machine.wait_booted()?;
        Ok(machine)
    }

    fn wait_booted(&mut self) -> Result<(), String> {
        let parent = self.unshare.id();
        let mut init = None;
        let found = wait_until(DEADLINE, || {
            if let Ok(Some(_)) = self.unshare.try_wait() {
                return true;
            }
            init = fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
                .ok()
                .and_then(|c| c.split_whitespace().next()?.parse::<i32>().ok())
                .filter(|pid| {
                    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c == "systemd\n")
                });
            init.is_some()
        });
        let Some(init) = init.filter(|_| found) else {
            return Err(format!("no systemd as PID 1\n{}", self.console()));
        };
        self.init = Pid::from_raw(init);
        let mut state = String::new();
        wait_until(DEADLINE, || {
            state = self.sh("systemctl is-system-running").stdout;
            matches!(state.trim(), "running" | "degraded")
        });
        if !matches!(state.trim(), "running" | "degraded") {
            return Err(format!("state {:?}\n{}", state.trim(), self.console()));
        }
        let version = self.sh("systemctl --version").stdout;
        self.version = version
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("systemctl --version: {version:?}"))?;
        Ok(())
    }

    /// Everything the private systemd and its services wrote to the console.
    pub fn console(&self) -> String {
        fs::read_to_string(self.state.path().join("console.log")).unwrap_or_default()
    }

    /// Runs `bash -c script` inside, as root in a clean environment, and
    /// returns what it printed. Kills it at `DEADLINE`.
    pub fn sh(&self, script: &str) -> Ran {
        let out = self.state.path().join("out");
        let err = self.state.path().join("err");
        let mut child = Command::new("nsenter")
            .arg("-t")
            .arg(self.init.to_string())
            .args(["-a", "--", "env", "-i"])
            .arg(format!("PATH={INSIDE_PATH}"))
            .args(["HOME=/root", "LANG=C.UTF-8", "bash", "-c", script])
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("create the output file"))
            .stderr(File::create(&err).expect("create the error file"))
            .spawn()
            .expect("run nsenter");
        let status = wait_child(&mut child, DEADLINE);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Ran {
            ok: status.is_some_and(|s| s.success()),
            stdout: fs::read_to_string(&out).unwrap_or_default(),
            stderr: fs::read_to_string(&err).unwrap_or_default(),
        }
    }

    /// `sh`, which must succeed; its standard output.
    #[track_caller]
    pub fn ok(&self, script: &str) -> String {
        let ran = self.sh(script);
        assert!(
            ran.ok,
            "inside: {script}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- console ---\n{}",
            ran.stdout,
            ran.stderr,
            self.console()
        );
        ran.stdout
    }

    /// Puts `contents` into the shared directory, where `inside_path`
    /// (returned) shows it.
    pub fn share(&self, name: &str, contents: &[u8]) -> String {
        let path = self.share.path().join(name);
        fs::write(&path, contents).expect("write into the shared directory");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        format!("/run/host-share/{name}")
    }

    /// Installs the fifod under test as /usr/bin/fifod, `config` as
    /// /etc/fifod/fifod.toml and the shipped fifod.service, unchanged.
    pub fn install_fifod(&self, config: &str) {
        let bin = fs::read(crate::common::BIN).expect("read the fifod binary");
        self.share("fifod", &bin);
        self.share("fifod.service", &unit_file("fifod.service"));
        self.share("fifod.toml", config.as_bytes());
        self.ok("install -m 0755 /run/host-share/fifod /usr/bin/fifod &&
             install -m 0644 /run/host-share/fifod.service /etc/systemd/system/ &&
             install -m 0644 -D /run/host-share/fifod.toml /etc/fifod/fifod.toml");
        self.ok("systemctl daemon-reload");
    }

    /// Replaces /etc/fifod/fifod.toml.
    pub fn set_config(&self, config: &str) {
        let shared = self.share("fifod.toml", config.as_bytes());
        self.ok(&format!("install -m 0644 {shared} /etc/fifod/fifod.toml"));
    }

    /// `systemctl show -p NAME --value UNIT`.
    pub fn property(&self, unit: &str, name: &str) -> String {
        self.ok(&format!("systemctl show -p {name} --value {unit}"))
            .trim_end()
            .to_owned()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        // PID 1 of the pid namespace: when it dies, the kernel kills every
        // process in the namespace, and unshare exits.
        if self.init.as_raw() > 0 {
            let _ = kill(self.init, Signal::SIGKILL);
        } else {
            let _ = self.unshare.kill();
        }
        if wait_child(&mut self.unshare, DEADLINE).is_none() {
            let _ = self.unshare.kill();
            let _ = self.unshare.wait();
        }
        self.terminal = None;
        if let Some(console) = self.console.take() {
            let _ = console.join();
        }
        // The namespace's processes leave the cgroup as the kernel reaps them.
        let gone = wait_until(DEADLINE, || {
            remove_tree(&self.cgroup);
            !self.cgroup.exists()
        });
        if !gone && !std::thread::panicking() {
            panic!("cgroup {} is still there", self.cgroup.display());
        }
    }
}

/// Both ends of a new pseudo-terminal.
#[derive(Debug)]
struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

/// A pseudo-terminal whose fds are close-on-exec from the start: the other
/// tests' threads spawn processes all the time, and none may inherit it.
fn open_pty() -> nix::Result<Pty> {
    use nix::fcntl::{OFlag, open};
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname_r(&master)?;
    let slave = open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    Ok(Pty {
        master: master.into(),
        slave,
    })
}

/// Removes a cgroup and every cgroup below it, deepest first.
fn remove_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Why this machine cannot boot a private systemd, if it cannot.
fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    if !Path::new("/lib/systemd/systemd").exists() {
        return Some("systemd is not installed".into());
    }
    for tool in ["unshare", "nsenter", "setpriv"] {
        let found = std::env::split_paths(INSIDE_PATH).any(|dir| dir.join(tool).exists());
        if !found {
            return Some(format!("{tool} (util-linux) is not installed"));
        }
    }
    match cgroup2_root() {
        None => Some("no cgroup2 hierarchy is mounted".into()),
        Some(root)
            if nix::unistd::access(&root.join("cgroup.procs"), nix::unistd::AccessFlags::W_OK)
                .is_err() =>
        {
            Some(format!("{} is not writable", root.display()))
        }
        Some(_) => None,
    }
}

/// Where the host's cgroup2 hierarchy is mounted (its root, not a subtree).
fn cgroup2_root() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        (fields.get(sep + 1) == Some(&"cgroup2") && fields.get(3) == Some(&"/"))
            .then(|| PathBuf::from(fields[4]))
    })
}

/// A unit file as shipped in systemd/.
pub fn unit_file(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(name);
    fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
