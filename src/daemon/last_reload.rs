//! How the last reload ended, for `STATUS=` and `fifod status`: a failed
//! reload stays in view, with when it happened and its first error, until a
//! reload succeeds. And which reload requests (SIGHUPs) it answers, so that
//! `fifod reload` can wait for the outcome of its own.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::control::{ReloadStatus, human_time};

#[derive(Debug, Default)]
pub(super) struct LastReload {
    /// `None` before the first reload.
    last: Option<Outcome>,
    /// Reload requests taken so far.
    requests: u64,
    /// The requests that the load under way answers: it read the file after
    /// each of them arrived.
    loading: u64,
}

#[derive(Debug)]
struct Outcome {
    /// When it ended, in seconds since the Unix epoch.
    at: u64,
    /// Why it failed, a line each (a config's errors, the first one first);
    /// empty if it succeeded.
    errors: Vec<String>,
    /// What it changed, as the log says it.
    changes: Vec<String>,
    /// The requests it answers.
    answers: u64,
}

impl LastReload {
    /// A reload was asked for (SIGHUP).
    pub(super) fn requested(&mut self) {
        self.requests += 1;
    }

    /// The file is being read for a reload: what it loads answers every
    /// request taken so far.
    pub(super) fn loading(&mut self) {
        self.loading = self.requests;
    }

    /// Requests taken so far, for the status document.
    pub(super) fn requests(&self) -> u64 {
        self.requests
    }

    /// A reload succeeded, changing `changes`: a failure before it is
    /// forgotten.
    pub(super) fn succeeded(&mut self, changes: Vec<String>) {
        self.last = Some(Outcome {
            at: now(),
            errors: Vec::new(),
            changes,
            answers: self.loading,
        });
    }

    /// A reload failed because of `why`: one line, or a config's errors one
    /// per line.
    pub(super) fn failed(&mut self, why: &str) {
        self.last = Some(Outcome {
            at: now(),
            errors: why.lines().map(|l| l.trim_end().to_string()).collect(),
            changes: Vec::new(),
            answers: self.loading,
        });
    }

    /// `line` as `STATUS=` says it: after the failure while one stands.
    pub(super) fn status_line(&self, line: String) -> String {
        match &self.last {
            Some(Outcome { at, errors, .. }) if !errors.is_empty() => {
                format!(
                    "reload failed at {}: {}; {line}",
                    human_time(*at),
                    errors[0]
                )
            }
            _ => line,
        }
    }

    /// The `last_reload` of the status document.
    pub(super) fn status(&self) -> Option<ReloadStatus> {
        self.last.as_ref().map(|o| ReloadStatus {
            at: o.at,
            ok: o.errors.is_empty(),
            error: o.errors.first().cloned(),
            errors: o.errors.clone(),
            changes: o.changes.clone(),
            answers: o.answers,
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
        assert_eq!(status.errors.len(), 2, "every error is kept");
        let line = last.status_line("2 fifos".into());
        let when = human_time(status.at);
        assert_eq!(
            line,
            format!("reload failed at {when}: f.toml:6:8: fifo.out.mode: invalid mode; 2 fifos")
        );

        last.succeeded(vec!["added fifo b".into()]);
        let status = last.status().expect("a reload happened");
        assert!(status.ok);
        assert_eq!(status.error, None);
        assert_eq!(status.changes, ["added fifo b"]);
        assert_eq!(last.status_line("2 fifos".into()), "2 fifos");
    }

    #[test]
    fn an_outcome_answers_the_requests_taken_before_its_load_started() {
        let mut last = LastReload::default();
        last.requested();
        last.loading();
        // A request while the file is read: the next load answers it.
        last.requested();
        last.succeeded(Vec::new());
        assert_eq!(last.status().map(|s| s.answers), Some(1));
        assert_eq!(last.requests(), 2);
        last.loading();
        last.failed("bad");
        assert_eq!(last.status().map(|s| s.answers), Some(2));
    }
}
