//! What a reload changes, worked out from the two configs alone: which
//! FIFOs, processes, routes and streams the new config keeps, which it
//! starts and which it stops. No fd is looked at here (what the filesystem
//! says of a FIFO comes in as `vanished`), so the diff is tested against a
//! simple model on random configs; the reload carries it out.
//!
//! Everything is matched by what it is, never by its place in a config: a
//! FIFO by its path (renaming it keeps its node and its bytes), a process
//! by its name, a route by its endpoints and its framing. The answers are
//! indices into the two configs, and every lookup goes through a hash map,
//! so a diff costs time in proportion to the configs, with no allocation
//! per endpoint.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::path::Path;

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::config::{
    Config, Eof, Framing, ProcessConfig, Role, RouteConfig, SinkRef, SourceRef, StderrMode,
};

/// Where a FIFO of the new config comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FifoPlan {
    /// The running FIFO at this index, at the same path: its node, fds
    /// and bytes.
    Keep(usize),
    /// A FIFO the last reload removed, still retiring at this path.
    Reclaim,
    /// A new node; `replaces`: the running FIFO that was at this path, but
    /// that someone removed or replaced.
    Make { replaces: Option<usize> },
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Diff {
    /// For each FIFO of the new config.
    pub(super) fifos: Vec<FifoPlan>,
    /// For each process of the new config: the running one it keeps
    /// (same name, settings and wiring), or `None` to start it.
    pub(super) processes: Vec<Option<usize>>,
    /// For each process of the new config: the running one of the same
    /// name, kept or not (what was held for its stdin goes to the new one).
    pub(super) same_name: Vec<Option<usize>>,
    /// For each route of the running config: the same route in the new
    /// one, whose lanes carry its state over.
    pub(super) routes: Vec<Option<usize>>,
    /// For each FIFO of the new config: an input whose stream goes on
    /// (the same node, an input in both configs, its ends forwarded in
    /// both or in neither).
    pub(super) carried_inputs: Vec<bool>,
    /// Both configs read fifod's own stdin.
    pub(super) carries_stdin: bool,
}

impl Diff {
    /// For each FIFO of the running config: the FIFO of the new one at its
    /// path (kept, or made again in place of a node someone removed).
    pub(super) fn successors(&self, old_fifos: usize) -> Vec<Option<usize>> {
        let mut next = vec![None; old_fifos];
        for (i, plan) in self.fifos.iter().enumerate() {
            if let FifoPlan::Keep(o) | FifoPlan::Make { replaces: Some(o) } = *plan
                && let Some(slot) = next.get_mut(o)
            {
                *slot = Some(i);
            }
        }
        next
    }

    /// For each process of the running config: whether it keeps running.
    pub(super) fn kept_processes(&self, old_processes: usize) -> Vec<bool> {
        let mut kept = vec![false; old_processes];
        for &o in self.processes.iter().flatten() {
            if let Some(k) = kept.get_mut(o) {
                *k = true;
            }
        }
        kept
    }
}

/// An endpoint as routes name it, in one id space for both configs: a
/// FIFO by its path, a process by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum End {
    Fifo(u32),
    Stdout(u32),
    Stderr(u32),
    ProcessStdin(u32),
    OwnStdin,
    OwnStdout,
}

/// A route as its sets of endpoints plus its framing: two configs have the
/// same route when these are equal (buffer and policy may change).
type RouteKey = (Vec<End>, Vec<End>, bool);

/// Interned FIFO paths and process names of both configs.
#[derive(Debug, Default)]
struct Ids<'a> {
    paths: HashMap<&'a OsStr, u32>,
    names: HashMap<&'a str, u32>,
}

impl<'a> Ids<'a> {
    fn path(&mut self, path: &'a Path) -> u32 {
        let next = self.paths.len() as u32;
        *self.paths.entry(path.as_os_str()).or_insert(next)
    }

    fn name(&mut self, name: &'a str) -> u32 {
        let next = self.names.len() as u32;
        *self.names.entry(name).or_insert(next)
    }

    /// The keys of `config`'s routes.
    fn route_keys(&mut self, config: &'a Config) -> Vec<RouteKey> {
        let paths: HashMap<&str, u32> = config
            .fifos
            .iter()
            .map(|f| (f.name.as_str(), self.path(&f.path)))
            .collect();
        let fifo = |name: &str| paths.get(name).copied().unwrap_or(u32::MAX);
        config
            .routes
            .iter()
            .map(|route: &'a RouteConfig| {
                let mut from: Vec<End> = route
                    .from
                    .iter()
                    .map(|r| match r {
                        SourceRef::Fifo(name) => End::Fifo(fifo(name)),
                        SourceRef::Process(name) => End::Stdout(self.name(name)),
                        SourceRef::Stderr(name) => End::Stderr(self.name(name)),
                        SourceRef::Stdin => End::OwnStdin,
                    })
                    .collect();
                let mut to: Vec<End> = route
                    .to
                    .iter()
                    .map(|r| match r {
                        SinkRef::Fifo(name) => End::Fifo(fifo(name)),
                        SinkRef::Process(name) => End::ProcessStdin(self.name(name)),
                        SinkRef::Stdout => End::OwnStdout,
                    })
                    .collect();
                from.sort_unstable();
                to.sort_unstable();
                (from, to, route.framing == Framing::Lines)
            })
            .collect()
    }
}

/// Which of its standard streams a process has piped: stdin, stdout,
/// stderr (to a route of its own, or logged).
type Wiring = (bool, bool, bool);

/// What one config's routes say of its endpoints.
#[derive(Debug, Default)]
struct Named<'a> {
    from: HashSet<&'a SourceRef>,
    to: HashSet<&'a SinkRef>,
    /// Input FIFOs whose ends a route forwards, by name.
    forwarded: HashSet<&'a str>,
}

impl<'a> Named<'a> {
    fn of(config: &'a Config) -> Named<'a> {
        let mut named = Named::default();
        for route in &config.routes {
            named.from.extend(&route.from);
            named.to.extend(&route.to);
            if route.eof == Eof::Forward {
                named
                    .forwarded
                    .extend(route.from.iter().filter_map(|r| match r {
                        SourceRef::Fifo(name) => Some(name.as_str()),
                        _ => None,
                    }));
            }
        }
        named
    }

    fn wiring(&self, p: &ProcessConfig) -> Wiring {
        let stderr = match p.stderr {
            StderrMode::Separate => self.from.contains(&SourceRef::Stderr(p.name.clone())),
            StderrMode::Log => true,
            StderrMode::Merge | StderrMode::Null | StderrMode::Inherit => false,
        };
        let stdin = self.to.contains(&SinkRef::Process(p.name.clone()));
        let stdout = self.from.contains(&SourceRef::Process(p.name.clone()));
        (stdin, stdout, stderr)
    }

    /// Whether input FIFO `name` is read in sessions (its ends forwarded).
    fn sessions(&self, name: &str) -> bool {
        self.forwarded.contains(name)
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
    let gone = |o: usize| vanished.get(o).copied().unwrap_or(false);
    let mut running_at: HashMap<&OsStr, usize> = HashMap::default();
    let mut replaced_at: HashMap<&OsStr, usize> = HashMap::default();
    for (o, f) in old.fifos.iter().enumerate() {
        let at = if gone(o) {
            &mut replaced_at
        } else {
            &mut running_at
        };
        at.entry(f.path.as_os_str()).or_insert(o);
    }
    let fifos: Vec<FifoPlan> = new
        .fifos
        .iter()
        .map(|f| match running_at.get(f.path.as_os_str()) {
            Some(&o) => FifoPlan::Keep(o),
            None if retiring.contains(f.path.as_path()) => FifoPlan::Reclaim,
            None => FifoPlan::Make {
                replaces: replaced_at.get(f.path.as_os_str()).copied(),
            },
        })
        .collect();

    let (old_named, new_named) = (Named::of(old), Named::of(new));
    let old_by_name: HashMap<&str, usize> = old
        .processes
        .iter()
        .enumerate()
        .map(|(o, p)| (p.name.as_str(), o))
        .collect();
    let same_name: Vec<Option<usize>> = new
        .processes
        .iter()
        .map(|p| old_by_name.get(p.name.as_str()).copied())
        .collect();
    let processes = new
        .processes
        .iter()
        .zip(&same_name)
        .map(|(p, &o)| {
            let o = o?;
            let was = &old.processes[o];
            (was == p && old_named.wiring(was) == new_named.wiring(p)).then_some(o)
        })
        .collect();

    // Identical routes are matched in order: the first of the running
    // config's takes the first of the new one's, and so on.
    let mut ids = Ids::default();
    let old_keys = ids.route_keys(old);
    let mut new_routes: HashMap<RouteKey, VecDeque<usize>> = HashMap::default();
    for (r, key) in ids.route_keys(new).into_iter().enumerate() {
        new_routes.entry(key).or_default().push_back(r);
    }
    let routes = old_keys
        .into_iter()
        .map(|key| new_routes.get_mut(&key)?.pop_front())
        .collect();

    let carried_inputs = new
        .fifos
        .iter()
        .zip(&fifos)
        .map(|(f, plan)| match *plan {
            FifoPlan::Keep(o) => {
                let was = &old.fifos[o];
                was.role == Role::Input
                    && f.role == Role::Input
                    && old_named.sessions(&was.name) == new_named.sessions(&f.name)
            }
            FifoPlan::Reclaim | FifoPlan::Make { .. } => false,
        })
        .collect();
    let carries_stdin =
        old_named.from.contains(&SourceRef::Stdin) && new_named.from.contains(&SourceRef::Stdin);

    Diff {
        fifos,
        processes,
        same_name,
        routes,
        carried_inputs,
        carries_stdin,
    }
}

#[cfg(test)]
mod tests;
