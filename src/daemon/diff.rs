//! What a reload changes, worked out from the two configs alone: which
//! FIFOs, processes and routes the new config keeps, which it starts and
//! which it stops. No fd is looked at here (what the filesystem says of a
//! FIFO comes in as `vanished`), so the diff is tested against a simple
//! model on random configs; the reload carries it out.
//!
//! Everything is matched by what it is (`Key`), never by its place in a
//! config: a FIFO by its path (renaming it keeps its node and its bytes), a
//! process stream by the process's name, a route by its endpoints and its
//! framing. Lookups go through hash maps, so a reload costs time in
//! proportion to the config, and nothing in proportion to its square.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};

use crate::config::{Config, Eof, Framing, RouteConfig, SinkRef, SourceRef, StderrMode};

/// What an endpoint is across configs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Key {
    Fifo(PathBuf),
    Stdout(String),
    Stderr(String),
    Log(String),
    Stdin(String),
    OwnStdin,
    OwnStdout,
    /// A detached node is never carried over a second time.
    Detached(PathBuf),
}

/// Each FIFO's path by its name, for one config.
pub(super) type Paths<'a> = HashMap<&'a str, &'a Path>;

pub(super) fn fifo_paths(config: &Config) -> Paths<'_> {
    config
        .fifos
        .iter()
        .map(|f| (f.name.as_str(), f.path.as_path()))
        .collect()
}

fn fifo_path(name: &str, paths: &Paths<'_>) -> PathBuf {
    paths.get(name).map(|p| p.to_path_buf()).unwrap_or_default()
}

pub(super) fn source_ref_key(r: &SourceRef, paths: &Paths<'_>) -> Key {
    match r {
        SourceRef::Fifo(name) => Key::Fifo(fifo_path(name, paths)),
        SourceRef::Process(name) => Key::Stdout(name.clone()),
        SourceRef::Stderr(name) => Key::Stderr(name.clone()),
        SourceRef::Stdin => Key::OwnStdin,
    }
}

pub(super) fn sink_ref_key(r: &SinkRef, paths: &Paths<'_>) -> Key {
    match r {
        SinkRef::Fifo(name) => Key::Fifo(fifo_path(name, paths)),
        SinkRef::Process(name) => Key::Stdin(name.clone()),
        SinkRef::Stdout => Key::OwnStdout,
    }
}

/// A route as sets of endpoint keys plus its framing: two configs have the
/// same route when these are equal (buffer and policy may change).
pub(super) type RouteKey = (Vec<Key>, Vec<Key>, bool);

pub(super) fn route_key(route: &RouteConfig, paths: &Paths<'_>) -> RouteKey {
    let mut from: Vec<Key> = route
        .from
        .iter()
        .map(|r| source_ref_key(r, paths))
        .collect();
    let mut to: Vec<Key> = route.to.iter().map(|r| sink_ref_key(r, paths)).collect();
    from.sort();
    to.sort();
    (from, to, route.framing == Framing::Lines)
}

/// Which of its standard streams a process has piped: stdin, stdout,
/// stderr (to a route of its own, or logged).
pub(super) type Wiring = (bool, bool, bool);

/// Every process's wiring in `config`, by name.
pub(super) fn wirings(config: &Config) -> HashMap<&str, Wiring> {
    let mut from = HashSet::new();
    let mut to = HashSet::new();
    for route in &config.routes {
        from.extend(route.from.iter());
        to.extend(route.to.iter());
    }
    config
        .processes
        .iter()
        .map(|p| {
            let name = p.name.clone();
            let stderr = match p.stderr {
                StderrMode::Separate => from.contains(&SourceRef::Stderr(name.clone())),
                StderrMode::Log => true,
                _ => false,
            };
            let stdin = to.contains(&SinkRef::Process(name.clone()));
            let stdout = from.contains(&SourceRef::Process(name));
            (p.name.as_str(), (stdin, stdout, stderr))
        })
        .collect()
}

/// Whether the input FIFO at each path is read in sessions (it feeds a
/// route that forwards ends), for one config.
pub(super) fn sessions(config: &Config) -> HashSet<PathBuf> {
    let paths = fifo_paths(config);
    config
        .routes
        .iter()
        .filter(|route| route.eof == Eof::Forward)
        .flat_map(|route| route.from.iter())
        .filter_map(|r| match r {
            SourceRef::Fifo(name) => paths.get(name.as_str()).map(|p| p.to_path_buf()),
            _ => None,
        })
        .collect()
}

/// Where a FIFO of the new config comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FifoPlan {
    /// The running FIFO at this index, at the same path: its node, fds
    /// and bytes.
    Keep(usize),
    /// A FIFO the last reload removed, still retiring at this path.
    Reclaim,
    /// A new node; `again`: one of the running config was at this path,
    /// but someone removed or replaced it.
    Make { again: bool },
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Diff {
    /// For each FIFO of the new config.
    pub(super) fifos: Vec<FifoPlan>,
    /// For each process of the new config: the running one it keeps
    /// (same name, settings and wiring), or `None` to start it.
    pub(super) processes: Vec<Option<usize>>,
    /// For each route of the running config: the same route in the new
    /// one, whose lanes carry its state over.
    pub(super) routes: Vec<Option<usize>>,
    /// The running sources whose stream goes on in the new config: same
    /// key, the same node or process, read the same way.
    pub(super) carried_sources: HashSet<Key>,
}

impl Diff {
    /// The processes the new config keeps running, by name.
    pub(super) fn kept_processes(&self, new: &Config) -> HashSet<String> {
        self.processes
            .iter()
            .zip(&new.processes)
            .filter(|(kept, _)| kept.is_some())
            .map(|(_, p)| p.name.clone())
            .collect()
    }
}

/// The difference from `old` to `new`. `vanished`, indexed like `old`'s
/// FIFOs: the path no longer names the running node. `retiring`: paths of
/// outputs an earlier reload removed that are still being emptied.
pub(super) fn diff(
    old: &Config,
    new: &Config,
    vanished: &[bool],
    retiring: &HashSet<&Path>,
) -> Diff {
    let running_at: HashMap<&Path, usize> = old
        .fifos
        .iter()
        .enumerate()
        .filter(|&(o, _)| !vanished.get(o).copied().unwrap_or(false))
        .map(|(o, f)| (f.path.as_path(), o))
        .collect();
    let gone: HashSet<&Path> = old
        .fifos
        .iter()
        .zip(vanished)
        .filter(|&(_, &gone)| gone)
        .map(|(f, _)| f.path.as_path())
        .collect();
    let fifos = new
        .fifos
        .iter()
        .map(|f| {
            let path = f.path.as_path();
            match running_at.get(path) {
                Some(&o) => FifoPlan::Keep(o),
                None if retiring.contains(path) => FifoPlan::Reclaim,
                None => FifoPlan::Make {
                    again: gone.contains(path),
                },
            }
        })
        .collect();

    let old_wiring = wirings(old);
    let new_wiring = wirings(new);
    let old_by_name: HashMap<&str, usize> = old
        .processes
        .iter()
        .enumerate()
        .map(|(o, p)| (p.name.as_str(), o))
        .collect();
    let processes: Vec<Option<usize>> = new
        .processes
        .iter()
        .map(|p| {
            let o = *old_by_name.get(p.name.as_str())?;
            let name = p.name.as_str();
            (old.processes[o] == *p && old_wiring.get(name) == new_wiring.get(name)).then_some(o)
        })
        .collect();

    // Identical routes are matched in order: the first of the running
    // config's takes the first of the new one's, and so on.
    let new_paths = fifo_paths(new);
    let mut new_routes: HashMap<RouteKey, VecDeque<usize>> = HashMap::new();
    for (r, route) in new.routes.iter().enumerate() {
        new_routes
            .entry(route_key(route, &new_paths))
            .or_default()
            .push_back(r);
    }
    let old_paths = fifo_paths(old);
    let routes = old
        .routes
        .iter()
        .map(|route| {
            new_routes
                .get_mut(&route_key(route, &old_paths))?
                .pop_front()
        })
        .collect();

    let mut diff = Diff {
        fifos,
        processes,
        routes,
        carried_sources: HashSet::new(),
    };
    diff.carried_sources = carried_sources(old, new, &diff, &gone);
    diff
}

/// Every source key a config has, but detached nodes (they exist only at
/// run time) and the sessions flag of input FIFOs.
fn source_keys(config: &Config) -> HashMap<Key, bool> {
    let paths = fifo_paths(config);
    let sessions = sessions(config);
    let mut keys = HashMap::new();
    for route in &config.routes {
        for r in &route.from {
            let key = source_ref_key(r, &paths);
            let reads_sessions = matches!(&key, Key::Fifo(path) if sessions.contains(path));
            keys.insert(key, reads_sessions);
        }
    }
    for p in &config.processes {
        if p.stderr == StderrMode::Log {
            keys.insert(Key::Log(p.name.clone()), false);
        }
    }
    keys
}

fn carried_sources(old: &Config, new: &Config, diff: &Diff, gone: &HashSet<&Path>) -> HashSet<Key> {
    let kept = diff.kept_processes(new);
    let old_keys = source_keys(old);
    source_keys(new)
        .into_iter()
        .filter(|(key, sessions)| old_keys.get(key) == Some(sessions))
        .map(|(key, _)| key)
        .filter(|key| match key {
            Key::Fifo(path) => !gone.contains(path.as_path()),
            Key::Stdout(name) | Key::Stderr(name) | Key::Log(name) => kept.contains(name),
            Key::OwnStdin => true,
            Key::Stdin(_) | Key::OwnStdout | Key::Detached(_) => false,
        })
        .collect()
}

#[cfg(test)]
mod tests;
