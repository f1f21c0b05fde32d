//! Value types written as strings in the config: sizes, durations and file modes.
//!
//! Each parser returns a message that says what is accepted, so the config
//! loader can put it behind a location.

use std::fmt;
use std::time::Duration;

/// A byte count written as `"64KiB"`, `"1MiB"`, `"4096B"` or `"4096"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

impl Size {
    pub fn parse(text: &str) -> Result<Size, String> {
        let bad = || {
            format!(
                "invalid size \"{text}\": expected a whole number with unit B, KiB, MiB or GiB, such as \"64KiB\""
            )
        };
        let (digits, unit) = split_number(text.trim()).ok_or_else(bad)?;
        let factor = match unit {
            "" | "B" => 1,
            "KiB" => KIB,
            "MiB" => MIB,
            "GiB" => GIB,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        n.checked_mul(factor).map(Size).ok_or_else(bad)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (factor, unit) in [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
            if n >= factor && n.is_multiple_of(factor) {
                return write!(f, "{}{unit}", n / factor);
            }
        }
        write!(f, "{n}B")
    }
}

/// Parses `"100ms"`, `"5s"` or `"2m"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration \"{text}\": expected a whole number with unit ms, s or m, such as \"5s\""
        )
    };
    let (digits, unit) = split_number(text.trim()).ok_or_else(bad)?;
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        _ => None,
    };
    millis.map(Duration::from_millis).ok_or_else(bad)
}

/// Formats a duration the way the config writes it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn split_number(text: &str) -> Option<(&str, &str)> {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if end == 0 {
        return None;
    }
    Some((&text[..end], text[end..].trim_start()))
}

/// Permission bits written as an octal string: `"640"` or `"0640"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl Mode {
    pub fn parse(text: &str) -> Result<Mode, String> {
        let bad = || {
            format!(
                "invalid mode \"{text}\": expected 3 octal digits, optionally after a 0, such as \"0640\""
            )
        };
        let digits = match text.len() {
            3 => text,
            4 if text.starts_with('0') => &text[1..],
            _ => return Err(bad()),
        };
        if !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(bad());
        }
        u32::from_str_radix(digits, 8).map(Mode).map_err(|_| bad())
    }

    pub fn bits(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(Size::parse("4096"), Ok(Size(4096)));
        assert_eq!(Size::parse("4096B"), Ok(Size(4096)));
        assert_eq!(Size::parse("64KiB"), Ok(Size(65536)));
        assert_eq!(Size::parse("1MiB"), Ok(Size(1 << 20)));
        assert_eq!(Size::parse("2GiB"), Ok(Size(2 << 30)));
        assert_eq!(Size::parse(" 3 MiB "), Ok(Size(3 << 20)));
        for bad in [
            "",
            "MiB",
            "1MB",
            "1.5MiB",
            "-1",
            "1 KB",
            "99999999999999999999GiB",
            "1TiB",
        ] {
            let err = Size::parse(bad).unwrap_err();
            assert!(err.contains("expected a whole number"), "{bad}: {err}");
        }
    }

    #[test]
    fn size_display_round_trips() {
        for n in [1, 4096, 65536, 1 << 20, 3 << 30, 1500] {
            let shown = Size(n).to_string();
            assert_eq!(Size::parse(&shown), Ok(Size(n)), "{shown}");
        }
        assert_eq!(Size(1 << 20).to_string(), "1MiB");
        assert_eq!(Size(1500).to_string(), "1500B");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "5", "5h", "1.5s", "s", "-1s", "99999999999999999999m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn modes() {
        assert_eq!(Mode::parse("640"), Ok(Mode(0o640)));
        assert_eq!(Mode::parse("0640"), Ok(Mode(0o640)));
        assert_eq!(Mode::parse("0000"), Ok(Mode(0)));
        assert_eq!(Mode::parse("777"), Ok(Mode(0o777)));
        for bad in [
            "999", "0o7777", "rw", "", "64", "1640", "07777", "0x1f", "+640",
        ] {
            let err = Mode::parse(bad).unwrap_err();
            assert!(err.contains("octal"), "{bad}: {err}");
        }
        assert_eq!(Mode(0o620).to_string(), "0620");
    }
}
