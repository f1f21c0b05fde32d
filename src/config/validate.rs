//! The second pass over a config: names, paths, roles, users, programs and
//! routes, each problem recorded with the span it came from.

use super::*;

pub(super) fn validate_daemon(
    raw: RawDaemon,
    env: &Environment,
    problems: &mut Problems,
) -> Option<DaemonConfig> {
    let mut ok = true;
    let dir = match &raw.dir {
        Some(dir) => match normalize_path(dir.get_ref()) {
            Ok(path) if SYSTEM_DIRS.iter().any(|d| path == Path::new(d)) => {
                problems.at(
                    dir,
                    "daemon.dir",
                    format!(
                        "{} is a system directory; fifod keeps its lock and control socket in \
                         `dir`: give it a directory of its own, such as /run/fifod",
                        path.display()
                    ),
                );
                None
            }
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
    let control_group = match &raw.control_group {
        Some(group) => match lookup_id(group, IdKind::Group) {
            Ok(gid) => Some(gid),
            Err(e) => {
                problems.at(group, "daemon.control_group", e);
                ok = false;
                None
            }
        },
        None => None,
    };
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
        control_group,
    })
}

/// The control socket's path, relative to `dir` unless absolute; an empty
/// string turns the socket off.
pub(super) fn validate_control(
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
    // Inside dir, the lock covers it: a stale socket there is fifod's own.
    if path.is_absolute() {
        problems.at(
            value,
            "daemon.control",
            "must be a path inside dir, relative to it (such as \"control.sock\")",
        );
        return Err(());
    }
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

pub(super) fn check_range(size: Size, min: u64, max: u64) -> Result<(), String> {
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
pub(super) fn check_name(name: &str) -> Result<(), String> {
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

pub(super) fn validate_fifo(
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
    let joined = path.as_os_str().len();
    if joined > PATH_MAX {
        problems.add(
            Some(path_span.clone()),
            format!("{key}.path"),
            format!(
                "is {joined} bytes long once joined to daemon.dir; at most {PATH_MAX} are allowed"
            ),
        );
        return None;
    }
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

pub(super) enum IdKind {
    User,
    Group,
}

pub(super) fn lookup_id(spec: &Spanned<IdSpec>, kind: IdKind) -> Result<u32, String> {
    let name = match spec.get_ref() {
        IdSpec::Number(n) => return real_id(*n),
        IdSpec::Name(name) => name,
    };
    if let Ok(n) = name.parse::<u32>() {
        return real_id(n);
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

/// `n`, unless it is the id that `chown` reads as "leave it as it is".
fn real_id(n: u32) -> Result<u32, String> {
    if n == u32::MAX {
        return Err(
            "4294967295 is (uid_t) -1, which chown reads as \"leave it as it is\": \
             name a real user or group"
                .to_string(),
        );
    }
    Ok(n)
}

/// Directories that belong to the system: fifod puts its lock and its
/// control socket in `dir`, and removes it at stop if it made it.
const SYSTEM_DIRS: [&str; 25] = [
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib64",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/run/user",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/var",
    "/var/lib",
    "/var/log",
    "/var/run",
    "/var/tmp",
];

/// Lexically normalises a path: drops `.` and repeated slashes, refuses `..`
/// (which could climb out of `dir`, and makes two spellings of one path hard
/// to tell apart), NUL bytes and over-long names.
pub fn normalize_path(text: &str) -> Result<PathBuf, String> {
    if text.contains('\0') {
        return Err("must not contain a NUL byte".to_string());
    }
    // A newline or escape in a name would let a path forge lines of the log
    // and of `fifod check`.
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(format!(
            "must not contain control characters (found {})",
            c.escape_default()
        ));
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

pub(super) fn check_paths(
    fifos: &[FifoConfig],
    spans: &[Range<usize>],
    daemon: Option<&DaemonConfig>,
    problems: &mut Problems,
) {
    let Some(daemon) = daemon else { return };
    let lock = daemon.dir.join(LOCK_FILE_NAME);
    // Every path, so that a FIFO's ancestors are looked up rather than each
    // pair of FIFOs compared (configs with thousands of FIFOs exist).
    let mut by_path: HashMap<&Path, &str> = HashMap::new();
    for fifo in fifos {
        by_path.entry(fifo.path.as_path()).or_insert(&fifo.name);
    }
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
        } else if let Some(other) = fifo.path.ancestors().skip(1).find_map(|a| by_path.get(a)) {
            problems.add(
                span,
                key,
                format!("is inside fifo.{other}, which is a FIFO"),
            );
        }
        seen.insert(&fifo.path, &fifo.name);
    }
}

pub(super) fn validate_process(
    name: &Spanned<std::borrow::Cow<'_, str>>,
    raw: RawProcess,
    environment: &Environment,
    problems: &mut Problems,
) -> Option<ProcessConfig> {
    let key = format!("process.{}", name.get_ref());
    let before = problems.found.len();
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
    let clean_env = raw
        .clean_env
        .as_ref()
        .map_or(raw.user.is_some(), |v| *v.get_ref());
    let env: Vec<(String, String)> = raw
        .env
        .as_ref()
        .map(|e| e.get_ref().clone().into_iter().collect())
        .unwrap_or_default();
    if let Some(e) = &raw.env {
        for (var, value) in e.get_ref() {
            let why = if var.is_empty() || var.contains('=') || var.contains('\0') {
                "a name must be non-empty, without '=' or a NUL byte"
            } else if value.contains('\0') {
                "its value must not contain a NUL byte"
            } else {
                continue;
            };
            problems.at(
                e,
                format!("{key}.env"),
                format!("invalid variable \"{}\": {why}", var.escape_debug()),
            );
        }
    }
    match raw.command.get_ref().first() {
        None => problems.at(
            &raw.command,
            format!("{key}.command"),
            "must name a program",
        ),
        Some(program) if program.get_ref().is_empty() => {
            problems.at(program, format!("{key}.command"), "must name a program");
        }
        Some(_) if command.iter().any(|a| a.contains('\0')) => {
            let arg = raw
                .command
                .get_ref()
                .iter()
                .find(|a| a.get_ref().contains('\0'));
            problems.add(
                arg.map(Spanned::span),
                format!("{key}.command"),
                "must not contain a NUL byte",
            );
        }
        Some(program) => {
            let inherited = || {
                if clean_env {
                    Some(CLEAN_PATH.to_string())
                } else {
                    std::env::var("PATH").ok()
                }
            };
            let path_var = env
                .iter()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| v.clone())
                .or_else(inherited);
            if let Err(e) = find_program(program.get_ref(), cwd.as_deref(), path_var.as_deref()) {
                problems.at(program, format!("{key}.command"), e);
            }
        }
    }
    let stderr = choose(
        &raw.stderr,
        format!("{key}.stderr"),
        &[
            ("merge", StderrMode::Merge),
            ("separate", StderrMode::Separate),
            ("log", StderrMode::Log),
            ("null", StderrMode::Null),
            ("inherit", StderrMode::Inherit),
        ],
        problems,
    );
    let restart = choose(
        &raw.restart,
        format!("{key}.restart"),
        &[
            ("on-failure", Restart::OnFailure),
            ("never", Restart::Never),
            ("always", Restart::Always),
        ],
        problems,
    );
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
    let (user, group) = process_identity(&raw, &key, environment, problems);
    let (Some(stderr), Some(restart)) = (stderr, restart) else {
        return None;
    };
    if problems.found.len() > before {
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
        user,
        group,
        clean_env,
    })
}

/// A process's `user` and `group`: looked up, with the user's primary group
/// when only `user` is given. Changing identity needs root.
fn process_identity(
    raw: &RawProcess,
    key: &str,
    env: &Environment,
    problems: &mut Problems,
) -> (Option<u32>, Option<u32>) {
    let user = raw.user.as_ref().and_then(|u| {
        lookup_id(u, IdKind::User)
            .map_err(|e| problems.at(u, format!("{key}.user"), e))
            .ok()
    });
    let group = raw.group.as_ref().and_then(|g| {
        lookup_id(g, IdKind::Group)
            .map_err(|e| problems.at(g, format!("{key}.group"), e))
            .ok()
    });
    let group = group.or_else(|| {
        let uid = nix::unistd::Uid::from_raw(user?);
        match nix::unistd::User::from_uid(uid) {
            Ok(Some(found)) => Some(found.gid.as_raw()),
            _ => {
                if let Some(u) = &raw.user {
                    problems.at(
                        u,
                        format!("{key}.user"),
                        "this uid has no entry in the user database: give group too",
                    );
                }
                None
            }
        }
    });
    if !env.is_root {
        let own_uid = nix::unistd::geteuid().as_raw();
        let own_gid = nix::unistd::getegid().as_raw();
        if let (Some(u), Some(uid)) = (&raw.user, user)
            && uid != own_uid
        {
            problems.at(
                u,
                format!("{key}.user"),
                "only root can start a process as another user",
            );
        }
        if let (Some(g), Some(gid)) = (&raw.group, group)
            && gid != own_gid
        {
            problems.at(
                g,
                format!("{key}.group"),
                "only root can start a process in another group",
            );
        }
    }
    (user, group)
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
pub(super) enum Named<'a> {
    Fifo(usize),
    Process(&'a ProcessConfig),
    Stderr(&'a ProcessConfig),
    Std,
}

pub(super) fn validate_routes(
    raw_routes: Vec<(usize, usize, RawRoute)>,
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
    // Route names given so far, for duplicates.
    let mut named: HashSet<String> = HashSet::new();
    for (i, base, raw) in raw_routes {
        problems.base = base;
        let mut ok = true;
        let name = match &raw.name {
            None => format!("route[{i}]"),
            Some(n) => {
                let key = format!("route[{i}].name");
                if let Err(e) = check_route_name(n.get_ref()) {
                    problems.at(n, key, e);
                    ok = false;
                } else if !named.insert(n.get_ref().clone()) {
                    problems.at(n, key, format!("route \"{}\" is named twice", n.get_ref()));
                    ok = false;
                }
                n.get_ref().clone()
            }
        };
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
        let when_full = choose(
            &raw.when_full,
            format!("route[{i}].when_full"),
            &[
                ("block", WhenFull::Block),
                ("drop-newest", WhenFull::DropNewest),
                ("drop-oldest", WhenFull::DropOldest),
            ],
            problems,
        );
        let eof = choose(
            &raw.eof,
            format!("route[{i}].eof"),
            &[("hold", Eof::Hold), ("forward", Eof::Forward)],
            problems,
        );
        let framing = choose(
            &raw.framing,
            format!("route[{i}].framing"),
            &[("bytes", Framing::Bytes), ("lines", Framing::Lines)],
            problems,
        );
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
                name,
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

/// A route's `name`: the characters of endpoint names, and `.`, so that it
/// never looks like the `route[N]` of a route without one.
fn check_route_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "invalid route name \"{}\": use up to 128 letters, digits, '_', '-' and '.'",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// The known name closest to a misspelt one, if it is close enough to be
/// what was meant.
pub(super) fn suggest<'a>(wrong: &str, known: impl Iterator<Item = &'a String>) -> Option<&'a str> {
    known
        .map(|k| (edit_distance(wrong, k), k))
        .filter(|(d, k)| *d <= 2 && *d < k.chars().count().max(2))
        .min()
        .map(|(_, k)| k.as_str())
}

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
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

/// One of a fixed set of words, the first being the default.
fn choose<T: Copy>(
    value: &Option<Spanned<String>>,
    key: String,
    options: &[(&str, T)],
    problems: &mut Problems,
) -> Option<T> {
    let Some(value) = value else {
        return options.first().map(|&(_, t)| t);
    };
    if let Some(&(_, t)) = options.iter().find(|(word, _)| word == value.get_ref()) {
        return Some(t);
    }
    let mut expected: Vec<String> = options.iter().map(|(o, _)| format!("\"{o}\"")).collect();
    let last = expected.pop().unwrap_or_default();
    let expected = match expected.is_empty() {
        true => last,
        false => format!("{} or {last}", expected.join(", ")),
    };
    problems.at(
        value,
        key,
        format!("invalid value \"{}\": expected {expected}", value.get_ref()),
    );
    None
}
