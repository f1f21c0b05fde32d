//! The diff against a model: the same questions answered by the plainest
//! loops over the two configs, on random pairs of configs.

use std::path::PathBuf;

use proptest::prelude::*;

use super::*;
use crate::config::{Environment, ProcessConfig, parse};

fn env() -> Environment {
    Environment {
        runtime_directory: None,
        xdg_runtime_dir: Some("/run/user/1000".into()),
        is_root: false,
    }
}

/// One random config, as its text: inputs `a`–`c` and outputs `d`–`f` at
/// paths `p0`–`p5` (so that a FIFO may be renamed, or another take its
/// path), processes `x` and `y`, and up to five routes between them.
#[derive(Debug, Clone)]
struct Spec {
    fifos: Vec<(usize, usize)>,
    processes: Vec<(usize, usize, bool)>,
    routes: Vec<(Vec<usize>, Vec<usize>, bool, bool)>,
}

const FIFOS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
const PROCESSES: [&str; 2] = ["x", "y"];
const STDERR: [&str; 3] = ["merge", "separate", "log"];

fn spec() -> impl Strategy<Value = Spec> {
    (
        proptest::sample::subsequence((0..6).collect::<Vec<_>>(), 0..=6),
        Just((0..6).collect::<Vec<usize>>()).prop_shuffle(),
        proptest::collection::vec((0..2usize, 0..3usize, any::<bool>()), 0..=2),
        proptest::collection::vec(
            (
                proptest::collection::vec(0..9usize, 1..=2),
                proptest::collection::vec(0..6usize, 1..=2),
                any::<bool>(),
                any::<bool>(),
            ),
            0..=5,
        ),
    )
        .prop_map(|(names, paths, processes, routes)| Spec {
            fifos: names.into_iter().map(|n| (n, paths[n])).collect(),
            processes,
            routes,
        })
}

impl Spec {
    /// A config that takes each part from `self` or from `other` as `pick`
    /// says: most reloads change a little of a config, not all of it.
    fn blend(&self, other: &Spec, pick: &[bool]) -> Spec {
        let pick = |i: usize| pick.get(i).copied().unwrap_or(false);
        let fifo = |spec: &Spec, n: usize| spec.fifos.iter().copied().find(|&(f, _)| f == n);
        let fifos = (0..6)
            .filter_map(|n| {
                if pick(n) {
                    fifo(other, n)
                } else {
                    fifo(self, n)
                }
            })
            .collect();
        let processes = if pick(6) {
            &other.processes
        } else {
            &self.processes
        }
        .clone();
        let routes = (0..self.routes.len().max(other.routes.len()))
            .filter_map(|i| {
                if pick(7 + i) {
                    other.routes.get(i)
                } else {
                    self.routes.get(i)
                }
                .cloned()
            })
            .collect();
        Spec {
            fifos,
            processes,
            routes,
        }
    }

    fn text(&self) -> String {
        let mut text = String::from("[daemon]\ndir = \"/srv/f\"\n");
        for &(n, path) in &self.fifos {
            text.push_str(&format!("[fifo.{}]\npath = \"p{path}\"\n", FIFOS[n]));
        }
        let mut processes = Vec::new();
        for &(p, stderr, unbuffered) in &self.processes {
            if processes.contains(&p) {
                continue;
            }
            processes.push(p);
            let command = if unbuffered {
                "[\"cat\", \"-u\"]"
            } else {
                "[\"cat\"]"
            };
            text.push_str(&format!(
                "[process.{}]\ncommand = {command}\nstderr = \"{}\"\n",
                PROCESSES[p], STDERR[stderr]
            ));
        }
        let has_fifo = |n: usize| self.fifos.iter().any(|&(f, _)| f == n);
        for (from, to, lines, forward) in &self.routes {
            // Sources: inputs a–c, x, x.stderr, y, y.stderr, stdin.
            let from: Vec<String> = from
                .iter()
                .filter_map(|&s| match s {
                    0..=2 => has_fifo(s).then(|| FIFOS[s].to_string()),
                    3 | 5 => processes
                        .contains(&((s - 3) / 2))
                        .then(|| PROCESSES[(s - 3) / 2].into()),
                    4 | 6 => processes
                        .contains(&((s - 4) / 2))
                        .then(|| format!("{}.stderr", PROCESSES[(s - 4) / 2])),
                    _ => Some("stdin".into()),
                })
                .collect();
            // Sinks: outputs d–f, x, y, stdout.
            let to: Vec<String> = to
                .iter()
                .filter_map(|&k| match k {
                    0..=2 => has_fifo(k + 3).then(|| FIFOS[k + 3].to_string()),
                    3 | 4 => processes
                        .contains(&(k - 3))
                        .then(|| PROCESSES[k - 3].into()),
                    _ => Some("stdout".into()),
                })
                .collect();
            if from.is_empty() || to.is_empty() {
                continue;
            }
            text.push_str(&format!(
                "[[route]]\nfrom = {from:?}\nto = {to:?}\nframing = \"{}\"\neof = \"{}\"\n",
                if *lines { "lines" } else { "bytes" },
                if *forward { "forward" } else { "hold" },
            ));
        }
        text
    }
}

/// The model: linear scans, no maps, endpoints compared by their names'
/// text.
fn model(old: &Config, new: &Config, vanished: &[bool], retiring: &[PathBuf]) -> Diff {
    let fifos: Vec<FifoPlan> = new
        .fifos
        .iter()
        .map(|f| {
            let running =
                (0..old.fifos.len()).find(|&o| old.fifos[o].path == f.path && !vanished[o]);
            match running {
                Some(o) => FifoPlan::Keep(o),
                None if retiring.contains(&f.path) => FifoPlan::Reclaim,
                None => FifoPlan::Make {
                    replaces: (0..old.fifos.len())
                        .find(|&o| old.fifos[o].path == f.path && vanished[o]),
                },
            }
        })
        .collect();
    let wiring = |config: &Config, p: &ProcessConfig| {
        let named_from = |r: SourceRef| config.routes.iter().any(|route| route.from.contains(&r));
        let stdin = config
            .routes
            .iter()
            .any(|route| route.to.contains(&SinkRef::Process(p.name.clone())));
        let stderr = p.stderr == StderrMode::Log
            || (p.stderr == StderrMode::Separate && named_from(SourceRef::Stderr(p.name.clone())));
        (
            stdin,
            named_from(SourceRef::Process(p.name.clone())),
            stderr,
        )
    };
    let same_name: Vec<Option<usize>> = new
        .processes
        .iter()
        .map(|p| (0..old.processes.len()).find(|&o| old.processes[o].name == p.name))
        .collect();
    let processes: Vec<Option<usize>> = new
        .processes
        .iter()
        .map(|p| {
            (0..old.processes.len()).find(|&o| {
                old.processes[o] == *p && wiring(old, &old.processes[o]) == wiring(new, p)
            })
        })
        .collect();
    let path_of = |config: &Config, name: &str| {
        config
            .fifos
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.path.display().to_string())
            .unwrap_or_default()
    };
    let key_of_route = |config: &Config, route: &RouteConfig| {
        let mut from: Vec<String> = route
            .from
            .iter()
            .map(|r| match r {
                SourceRef::Fifo(name) => format!("fifo {}", path_of(config, name)),
                other => other.to_string(),
            })
            .collect();
        let mut to: Vec<String> = route
            .to
            .iter()
            .map(|r| match r {
                SinkRef::Fifo(name) => format!("fifo {}", path_of(config, name)),
                other => format!("to {other}"),
            })
            .collect();
        from.sort();
        to.sort();
        (from, to, route.framing == Framing::Lines)
    };
    let mut routes: Vec<Option<usize>> = Vec::new();
    for route in &old.routes {
        let key = key_of_route(old, route);
        let found = (0..new.routes.len())
            .find(|&r| key_of_route(new, &new.routes[r]) == key && !routes.contains(&Some(r)));
        routes.push(found);
    }
    let forwarded = |config: &Config, name: &str| {
        config.routes.iter().any(|route| {
            route.eof == Eof::Forward && route.from.contains(&SourceRef::Fifo(name.to_string()))
        })
    };
    let carried_inputs = new
        .fifos
        .iter()
        .zip(&fifos)
        .map(|(f, plan)| match *plan {
            FifoPlan::Keep(o) => {
                let was = &old.fifos[o];
                was.role == Role::Input
                    && f.role == Role::Input
                    && forwarded(old, &was.name) == forwarded(new, &f.name)
            }
            _ => false,
        })
        .collect();
    let reads_stdin = |config: &Config| {
        config
            .routes
            .iter()
            .any(|route| route.from.contains(&SourceRef::Stdin))
    };
    Diff {
        fifos,
        processes,
        same_name,
        routes,
        carried_inputs,
        carries_stdin: reads_stdin(old) && reads_stdin(new),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_diff_keeps_starts_stops_and_carries_what_the_model_does(
        old in spec(),
        other in spec(),
        pick in proptest::collection::vec(proptest::bool::weighted(0.2), 12),
        vanished in proptest::collection::vec(any::<bool>(), 6),
        retiring in proptest::sample::subsequence((0..6).collect::<Vec<usize>>(), 0..=2),
    ) {
        let new = old.blend(&other, &pick);
        let (Ok(old), Ok(new)) = (parse("old.toml", &old.text(), &env()), parse("new.toml", &new.text(), &env())) else {
            return Err(TestCaseError::reject("not a valid config"));
        };
        let vanished = &vanished[..old.fifos.len()];
        let retiring: Vec<PathBuf> =
            retiring.iter().map(|p| PathBuf::from(format!("/srv/f/p{p}"))).collect();
        let retiring_set: HashSet<&Path> = retiring.iter().map(PathBuf::as_path).collect();
        prop_assert_eq!(
            diff(&old, &new, vanished, &retiring_set),
            model(&old, &new, vanished, &retiring)
        );
    }
}

#[test]
fn a_renamed_fifo_keeps_its_node_and_its_route() {
    let old = parse(
        "old.toml",
        "[fifo.a]\npath = \"in\"\n[fifo.b]\n[[route]]\nfrom = [\"a\"]\nto = [\"b\"]\n",
        &env(),
    )
    .unwrap();
    let new = parse(
        "new.toml",
        "[fifo.input]\npath = \"in\"\n[fifo.b]\n[fifo.c]\n[[route]]\nfrom = [\"input\"]\nto = [\"b\"]\n",
        &env(),
    )
    .unwrap();
    let d = diff(&old, &new, &[false, false], &HashSet::default());
    assert_eq!(
        d.fifos,
        vec![
            FifoPlan::Keep(0),
            FifoPlan::Keep(1),
            FifoPlan::Make { replaces: None }
        ]
    );
    assert_eq!(d.routes, vec![Some(0)]);
    assert_eq!(d.carried_inputs, vec![true, false, false]);
}
