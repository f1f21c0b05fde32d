//! How the last reload ended, for `STATUS=` and `fifod status`: a failed
//! reload stays in view, with when it happened and its first error, until a
//! reload succeeds.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::control::{ReloadStatus, human_time};

#[derive(Debug, Default)]
pub(super) struct LastReload {
    /// `None` before the first reload.
    last: Option<Outcome>,
}

#[derive(Debug)]
struct Outcome {
    /// When it ended, in seconds since the Unix epoch.
    at: u64,
    /// Why it failed (one line); `None` if it succeeded.
    error: Option<String>,
}

impl LastReload {
    /// A reload succeeded: a failure before it is forgotten.
    pub(super) fn succeeded(&mut self) {
        self.last = Some(Outcome {
            at: now(),
            error: None,
        });
    }

    /// A reload failed because of `why`, of which the first line is kept
    /// (a config's errors come one per line, the first one first).
    pub(super) fn failed(&mut self, why: &str) {
        let first = why.lines().next().unwrap_or_default().trim_end();
        self.last = Some(Outcome {
            at: now(),
            error: Some(first.to_string()),
        });
    }

    /// `line` as `STATUS=` says it: after the failure while one stands.
    pub(super) fn status_line(&self, line: String) -> String {
        match &self.last {
            Some(Outcome {
                at,
                error: Some(why),
            }) => format!("reload failed at {}: {why}; {line}", human_time(*at)),
            _ => line,
        }
    }

    /// The `last_reload` of the status document.
    pub(super) fn status(&self) -> Option<ReloadStatus> {
        self.last.as_ref().map(|o| ReloadStatus {
            at: o.at,
            ok: o.error.is_none(),
            error: o.error.clone(),
        })
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_stands_until_a_reload_succeeds() {
        let mut last = LastReload::default();
        assert_eq!(last.status(), None);
        assert_eq!(last.status_line("2 fifos".into()), "2 fifos");

        last.failed("f.toml:6:8: fifo.out.mode: invalid mode\nf.toml:9:1: route[0]: more");
        let status = last.status().expect("a reload happened");
        assert!(!status.ok);
        assert_eq!(
            status.error.as_deref(),
            Some("f.toml:6:8: fifo.out.mode: invalid mode")
        );
        let line = last.status_line("2 fifos".into());
        let when = human_time(status.at);
        assert_eq!(
            line,
            format!("reload failed at {when}: f.toml:6:8: fifo.out.mode: invalid mode; 2 fifos")
        );

        last.succeeded();
        let status = last.status().expect("a reload happened");
        assert!(status.ok);
        assert_eq!(status.error, None);
        assert_eq!(last.status_line("2 fifos".into()), "2 fifos");
    }
}
