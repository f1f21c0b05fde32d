//! The relays fifod is compared with (socat, cat, coreutils tee, shell
//! pipelines, a bare FIFO), and the runner that puts any relay between the
//! harness's writers and readers.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::fifod::start_fifod;
use crate::harness::{MIB, Opts, Res, guarded};
use crate::procs::spawn;
use crate::report::{Samples, gibs};
use crate::sys::mkfifo;
use crate::traffic::{Moved, Transfer};
use crate::watchdog::{clear_deadline, deadline};

/// How a relay variant is set up around the harness's FIFOs.
pub enum Relay {
    /// fifod with this config body (FIFOs and routes); the FIFOs are under
    /// `<dir>/run`.
    Fifod(String),
    /// A command started before the transfer, with `{d}` in its arguments
    /// replaced by the directory of the FIFOs (which the harness makes).
    Cmd(Vec<String>),
    /// No relay: writers and readers share the FIFOs.
    Direct,
}

/// A shell script as the relay.
pub fn sh(script: &str) -> Relay {
    Relay::Cmd(vec!["sh".into(), "-c".into(), script.into()])
}

/// `socat -u` from one FIFO to another (its default 8 KiB buffer).
pub fn socat(from: &str, to: &str) -> Relay {
    Relay::Cmd(vec![
        "socat".into(),
        "-u".into(),
        format!("OPEN:{{d}}/{from},rdonly"),
        format!("OPEN:{{d}}/{to},wronly"),
    ])
}

/// The arguments of `socat -u` between two FIFOs given by path.
pub fn socat_args(from: &Path, to: &Path) -> [String; 3] {
    [
        "-u".into(),
        format!("OPEN:{},rdonly", from.display()),
        format!("OPEN:{},wronly", to.display()),
    ]
}

/// `cat from > to`.
pub fn cat(from: &str, to: &str) -> Relay {
    sh(&format!("cat {{d}}/{from} > {{d}}/{to}"))
}

/// Coreutils `tee` from one FIFO into several (the last one as stdout).
pub fn tee(from: &str, to: &[&str]) -> Relay {
    let (last, files) = to.split_last().map_or(("", &[][..]), |(l, f)| (*l, f));
    let files: String = files.iter().map(|f| format!("{{d}}/{f} ")).collect();
    sh(&format!("tee {files}< {{d}}/{from} > {{d}}/{last}"))
}

/// One `socat -u` per input into the same output (run by sh on PATH).
pub fn socat_merge(from: &[&str], to: &str) -> Relay {
    let each: Vec<String> = from
        .iter()
        .map(|f| format!("socat -u OPEN:{{d}}/{f},rdonly OPEN:{{d}}/{to},wronly"))
        .collect();
    sh(&format!("{} & wait", each.join(" & ")))
}

/// One `cat in > out` per input into the same output.
pub fn cat_merge(from: &[&str], to: &str) -> Relay {
    let each: Vec<String> = from
        .iter()
        .map(|f| format!("cat {{d}}/{f} > {{d}}/{to}"))
        .collect();
    sh(&format!("{} & wait", each.join(" & ")))
}

/// The shell pipeline `cat from | cat > to`.
pub fn cat_pipeline(from: &str, to: &str) -> Relay {
    sh(&format!("cat {{d}}/{from} | cat > {{d}}/{to}"))
}

/// Runs one transfer through `relay`. `fifos` are the FIFO names the
/// harness makes for non-fifod variants; writers/readers name their FIFO.
pub fn run_transfer(
    o: &Opts,
    relay: &Relay,
    fifos: &[&str],
    writers: &[(&str, Arc<Vec<u8>>, u64)],
    readers: &[(&str, u64)],
    lines: bool,
    pipe_size: Option<usize>,
) -> Res<(Moved, f64)> {
    let dir = o.fresh("run")?;
    let fifo_dir = match relay {
        Relay::Fifod(_) => dir.join("run"),
        _ => dir.join("f"),
    };
    let mut proc_ = None;
    let mut fifod = None;
    match relay {
        Relay::Fifod(body) => fifod = Some(start_fifod(&o.fifod, &dir, body)?),
        Relay::Cmd(argv) => {
            fs::create_dir(&fifo_dir).map_err(|e| e.to_string())?;
            for f in fifos {
                mkfifo(&fifo_dir.join(f))?;
            }
            let d = fifo_dir.display().to_string();
            let argv: Vec<String> = argv.iter().map(|a| a.replace("{d}", &d)).collect();
            let prog = if argv[0] == "socat" {
                &o.socat
            } else {
                &argv[0]
            };
            proc_ = Some(spawn(&argv[0], Command::new(prog).args(&argv[1..]), &[])?);
        }
        Relay::Direct => {
            fs::create_dir(&fifo_dir).map_err(|e| e.to_string())?;
            for f in fifos {
                mkfifo(&fifo_dir.join(f))?;
            }
        }
    }
    let t = Transfer {
        writers: writers
            .iter()
            .map(|(n, b, t)| (fifo_dir.join(n), Arc::clone(b), *t))
            .collect(),
        readers: readers
            .iter()
            .map(|(n, t)| (fifo_dir.join(n), *t))
            .collect(),
        lines,
        pipe_size,
    };
    let moved = t.run();
    let cpu = match (fifod, proc_) {
        (Some(f), _) => f.stop(),
        (_, Some(p)) => p.finish(Duration::from_secs(10)),
        _ => Ok(f64::NAN),
    };
    let _ = fs::remove_dir_all(&dir);
    let moved = moved?;
    Ok((moved, cpu?))
}

/// Runs every variant `o.runs` times (interleaved), collecting GiB/s.
#[allow(clippy::type_complexity)]
pub fn throughput_workload(
    o: &Opts,
    label: &str,
    variants: &[(&str, Relay, Option<usize>)],
    fifos: &[&str],
    writers: &[(&str, Arc<Vec<u8>>, u64)],
    readers: &[(&str, u64)],
    lines: bool,
) -> Res<Samples> {
    let mut s = Samples::default();
    let bytes: u64 = writers.iter().map(|w| w.2).sum();
    for rep in 0..o.runs {
        for (name, relay, pipe_size) in variants {
            let (m, cpu) = guarded(|| {
                deadline(
                    Duration::from_secs(30) + Duration::from_secs(bytes / (64 * MIB)),
                    &format!("{label} / {name}"),
                );
                run_transfer(o, relay, fifos, writers, readers, lines, *pipe_size)
            })
            .map_err(|e| format!("{label} / {name}: {e}"))?;
            clear_deadline();
            let g = gibs(m.bytes, m.secs);
            eprintln!(
                "  [{label} run {}/{}] {name}: {g:.2} GiB/s ({:.2} s, relay CPU {cpu:.2} s{})",
                rep + 1,
                o.runs,
                m.secs,
                if lines {
                    format!(", torn lines {}", m.torn)
                } else {
                    String::new()
                }
            );
            s.push(name, g);
            s.push_extra(name, "cpu", cpu);
            if lines {
                s.push_extra(name, "torn", m.torn as f64);
            }
        }
    }
    Ok(s)
}
