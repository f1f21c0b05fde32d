//! Results: samples per variant, medians and ranges, the Markdown tables,
//! the ratios, and the targets checked against the medians.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

use crate::harness::GIB;
use crate::sys::affinity;

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Samples of one metric per variant, in the order variants were added.
#[derive(Default)]
pub struct Samples {
    pub order: Vec<String>,
    values: BTreeMap<String, Vec<f64>>,
    /// Extra per-variant samples (relay CPU seconds, torn lines...).
    extra: BTreeMap<(String, &'static str), Vec<f64>>,
}

impl Samples {
    pub fn push(&mut self, variant: &str, v: f64) {
        if !self.values.contains_key(variant) {
            self.order.push(variant.to_string());
        }
        self.values.entry(variant.to_string()).or_default().push(v);
    }
    pub fn push_extra(&mut self, variant: &str, key: &'static str, v: f64) {
        self.extra
            .entry((variant.to_string(), key))
            .or_default()
            .push(v);
    }
    pub fn med(&self, variant: &str) -> f64 {
        self.values.get(variant).map_or(f64::NAN, |v| median(v))
    }
    pub fn med_extra(&self, variant: &str, key: &'static str) -> f64 {
        self.extra
            .get(&(variant.to_string(), key))
            .map_or(f64::NAN, |v| median(v))
    }
    pub fn range(&self, variant: &str) -> (f64, f64) {
        let v = self.values.get(variant).cloned().unwrap_or_default();
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo, hi)
    }
}

/// The report, built as the workloads run and printed at the end.
#[derive(Default)]
pub struct Report {
    pub text: String,
    /// Named medians the targets are checked against.
    pub facts: BTreeMap<String, f64>,
    /// Prefix of the facts of the CPU mode being run.
    pub prefix: String,
}

impl Report {
    pub fn fact(&mut self, key: &str, v: f64) {
        self.facts.insert(format!("{}{key}", self.prefix), v);
    }
}

pub fn gibs(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / GIB as f64 / secs
}

/// A throughput table: median GiB/s, min–max, relay CPU, and the ratio of
/// `reference` (fifod) to each row.
pub fn throughput_table(r: &mut Report, title: &str, s: &Samples, reference: &str, note: &str) {
    let _ = writeln!(r.text, "\n### {title}\n");
    if !note.is_empty() {
        let _ = writeln!(r.text, "{note}\n");
    }
    let _ = writeln!(
        r.text,
        "| variant | median GiB/s | min – max | relay CPU s (median) | {reference} ÷ variant |"
    );
    let _ = writeln!(r.text, "| --- | ---: | ---: | ---: | ---: |");
    let base = s.med(reference);
    for v in &s.order {
        let m = s.med(v);
        let (lo, hi) = s.range(v);
        let cpu = s.med_extra(v, "cpu");
        let torn = s.med_extra(v, "torn");
        let torn = if torn.is_nan() {
            String::new()
        } else if torn == 0.0 {
            " (lines whole)".to_string()
        } else {
            format!(" ({torn:.0} torn lines)")
        };
        let cpu = if cpu.is_nan() {
            "–".to_string()
        } else {
            format!("{cpu:.2}")
        };
        let ratio = if v == reference {
            "1.00".to_string()
        } else {
            format!("{:.2}×", base / m)
        };
        let _ = writeln!(
            r.text,
            "| {}{torn} | {m:.2} | {lo:.2} – {hi:.2} | {cpu} | {ratio} |",
            v.replace('|', "\\|")
        );
    }
}

/// The Targets table of the CPU mode being run, from its facts.
pub fn targets(r: &mut Report) {
    let f = |k: &str| {
        r.facts
            .get(&format!("{}{k}", r.prefix))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let mut rows: Vec<(String, String, bool)> = Vec::new();
    let mut check = |name: &str, got: String, ok: bool| rows.push((name.into(), got, ok));
    if !f("w1_fifod").is_nan() {
        let x = f("w1_fifod") / f("w1_socat");
        check(
            "1→1 ≥ 3× socat",
            format!(
                "{:.2} vs {:.2} GiB/s = {x:.2}×",
                f("w1_fifod"),
                f("w1_socat")
            ),
            x >= 3.0,
        );
        let y = f("w1_fifod") / f("w1_direct");
        check(
            "1→1 ≥ direct FIFO (default pipe size)",
            format!(
                "{:.2} vs {:.2} GiB/s = {y:.2}×",
                f("w1_fifod"),
                f("w1_direct")
            ),
            y >= 1.0,
        );
    }
    if !f("w2_fifod").is_nan() {
        let x = f("w2_fifod") / f("w2_tee");
        check(
            "1→3 ≥ 5× coreutils tee",
            format!("{:.2} vs {:.2} GiB/s = {x:.2}×", f("w2_fifod"), f("w2_tee")),
            x >= 5.0,
        );
    }
    if !f("w3_fifod_lines").is_nan() {
        if !f("w1_socat").is_nan() {
            let x = f("w3_fifod_lines") / f("w1_socat");
            check(
                "lines 4→1 ≥ socat 1→1 bytes",
                format!(
                    "{:.2} vs {:.2} GiB/s = {x:.2}×",
                    f("w3_fifod_lines"),
                    f("w1_socat")
                ),
                x >= 1.0,
            );
        }
        check(
            "lines 4→1 keep lines whole",
            format!("{:.0} torn lines", f("w3_fifod_lines_torn")),
            f("w3_fifod_lines_torn") == 0.0,
        );
    }
    if !f("w4_fifod_p99").is_nan() {
        let x = f("w4_fifod_p99") / f("w4_direct_p99");
        check(
            "latency p99 ≤ 1.5× direct",
            format!(
                "{:.1} vs {:.1} µs = {x:.2}×",
                f("w4_fifod_p99"),
                f("w4_direct_p99")
            ),
            x <= 1.5,
        );
        check(
            "latency p99 < socat",
            format!("{:.1} vs {:.1} µs", f("w4_fifod_p99"), f("w4_socat_p99")),
            f("w4_fifod_p99") < f("w4_socat_p99"),
        );
    }
    if !f("w5_ready_ms").is_nan() {
        check(
            "1,000 routes READY < 1 s",
            format!("{:.1} ms", f("w5_ready_ms")),
            f("w5_ready_ms") < 1000.0,
        );
        check(
            "1,000 routes < 32 MiB resident",
            format!("{:.1} MiB", f("w5_rss")),
            f("w5_rss") < 32.0,
        );
        check(
            "no CPU while idle",
            format!(
                "{:.2} s CPU, {:.0} context switches",
                f("w5_idle_cpu"),
                f("w5_idle_cs")
            ),
            f("w5_idle_cpu") == 0.0 && f("w5_idle_cs") == 0.0,
        );
    }
    crate::workloads::reload::targets(&f, &mut check);
    crate::workloads::control::targets(&f, &mut check);
    // Not a target: how close fifod comes to the physical limit.
    let limit: Vec<String> = [("1→1", "w1"), ("1→3 fan-out", "w2")]
        .into_iter()
        .filter(|(_, w)| !f(&format!("{w}_reference")).is_nan())
        .map(|(what, w)| {
            let (a, b) = (f(&format!("{w}_fifod")), f(&format!("{w}_reference")));
            format!("{what} {:.2} ({a:.2} vs {b:.2} GiB/s)", a / b)
        })
        .collect();
    if rows.is_empty() && limit.is_empty() {
        return;
    }
    let _ = writeln!(r.text, "\n### Targets\n");
    let _ = writeln!(r.text, "| target | measured | |");
    let _ = writeln!(r.text, "| --- | --- | --- |");
    for (name, got, ok) in rows {
        let _ = writeln!(
            r.text,
            "| {name} | {got} | {} |",
            if ok { "met" } else { "MISSED" }
        );
    }
    if !limit.is_empty() {
        let _ = writeln!(
            r.text,
            "\nfifod ÷ reference relay (the physical limit: a relay that does nothing else): {}.",
            limit.join("; ")
        );
    }
}

/// The machine and the tools, for the report.
pub fn machine(fifod: &Path) -> String {
    let first = |cmd: &str, args: &[&str], line: usize| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .nth(line)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "?".into())
    };
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("?", |m| m.trim_start_matches([' ', '\t', ':']));
    let mem = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")
                .map(str::trim)
                .map(str::to_string)
        })
        .unwrap_or_default();
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "- CPUs: {} × {model}\n- memory: {mem}\n- kernel: {}\n- {}\n- {}\n- {}\n",
        affinity().len(),
        kernel.trim(),
        first("socat", &["-V"], 1).trim(),
        first("tee", &["--version"], 0),
        first(&fifod.display().to_string(), &["--version"], 0),
    )
}
