//! The config loader on any input: it must return a config or diagnostics
//! that each have a place in the text, a message, and a key unless the text
//! is not TOML at all; never panic. See fuzz/README.md for how to run it.

#![no_main]

use fifod::config::{Environment, parse_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let env = Environment {
        runtime_directory: None,
        xdg_runtime_dir: Some("/run/user/1000".into()),
        // Both sides of the "only root may set user and group" checks.
        is_root: data.len() % 2 == 1,
    };
    let diagnostics = match parse_bytes("f.toml", data, &env) {
        Ok(config) => {
            config.summary();
            return;
        }
        Err(diagnostics) => diagnostics,
    };
    assert!(!diagnostics.is_empty(), "an error without diagnostics");
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.split('\n').collect();
    let is_toml = std::str::from_utf8(data)
        .is_ok_and(|text| toml::de::DeTable::parse_recoverable(text).1.is_empty());
    let mut previous = (1, 1);
    for d in &diagnostics {
        let shown = d.to_string();
        let Some((line, col)) = d.position else {
            panic!("unlocated: {shown:?}");
        };
        assert!(
            (1..=lines.len()).contains(&line),
            "line past the end: {shown:?}"
        );
        let width = lines[line - 1]
            .trim_start_matches('\u{feff}')
            .chars()
            .count();
        assert!(
            (1..=width + 1).contains(&col),
            "column past the end: {shown:?}"
        );
        assert!((line, col) >= previous, "not in file order: {shown:?}");
        previous = (line, col);
        assert!(!d.message.trim().is_empty(), "no message: {shown:?}");
        assert!(
            !d.key.is_empty() || !is_toml,
            "no key in a TOML file: {shown:?}"
        );
        assert!(
            !shown.contains(char::is_control),
            "not one printable line: {shown:?}"
        );
    }
});
