//! A fan-out's progress, where a crash of fifod cannot take it.
//!
//! With an fd store, a source that feeds several lanes is moved in rounds:
//! `tee` copies its front into every lane's pipe but one, then `splice`
//! moves it into the last one (the anchor), which consumes it. A crash
//! between the two leaves bytes in some pipes that the source still has;
//! after the round, a lane whose pipe took more than the anchor's is ahead
//! of the source by the difference. Both would come again after a restart.
//!
//! So each fanned-out source has a journal: a memfd in the fd store that
//! says, before a round, how much each lane's pipe held and how far it was
//! ahead (`Record::InFlight`), and after it, how far each lane is ahead
//! (`Record::Settled`). Taken back after a crash, an in-flight record and
//! what the pipes hold now tell what the round did: the anchor's pipe grew
//! by what was consumed, every other pipe by what it took.
//!
//! Records are written to two slots in turn, each with a sequence number
//! and a checksum: a write cut short by the crash leaves the slot before
//! it, which was true until then (nothing of the round had happened).

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;

use log::{error, info};
use nix::fcntl::{SpliceFFlags, splice, tee};
use nix::sys::memfd::{MFdFlags, memfd_create};
use rustc_hash::FxHashMap as HashMap;

use super::Daemon;
use super::io::{SPLICE_FLAGS, SpliceStop};
use crate::config::WhenFull;
use crate::fdstore;
use crate::pipe;
use crate::relay::{LaneId, SinkId, SourceId, Target, Took};

/// Where each of the two slots begins.
const SLOT: u64 = 64 * 1024;
/// Where the records end: a line log's bytes come after them.
pub(super) const RECORDS: u64 = 2 * SLOT;
/// The first line of every slot.
const MAGIC: &str = "fifod-tee 1";

/// One lane in a record: its store name, how many bytes its pipe held
/// before the round, and how far it was ahead of the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LaneMark {
    pub name: String,
    pub queued: usize,
    pub ahead: usize,
}

/// What a journal says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Record {
    /// A round may have moved bytes: the anchor (by store name) consumes.
    InFlight {
        anchor: String,
        lanes: Vec<LaneMark>,
    },
    /// No round under way; the lanes ahead of the source, and by how much
    /// (`queued` is not used).
    Settled(Vec<LaneMark>),
    /// A line log's run `done..cut` may be partly written into the lanes'
    /// pipes, which held `queued` bytes before (`line_log`).
    LinesInFlight {
        done: u64,
        cut: u64,
        lanes: Vec<LaneMark>,
    },
    /// A line log has given out everything before `done`.
    LinesSettled { done: u64 },
}

impl Record {
    fn encode(&self) -> String {
        let none = Vec::new();
        let (head, lanes) = match self {
            Record::InFlight { anchor, lanes } => (format!("in-flight {anchor}"), lanes),
            Record::Settled(lanes) => ("settled".to_string(), lanes),
            Record::LinesInFlight { done, cut, lanes } => {
                (format!("lines-in-flight {done} {cut}"), lanes)
            }
            Record::LinesSettled { done } => (format!("lines-settled {done}"), &none),
        };
        let mut body = head;
        body.push('\n');
        for lane in lanes {
            body.push_str(&format!("{} {} {}\n", lane.queued, lane.ahead, lane.name));
        }
        body
    }

    fn decode(body: &str) -> Option<Record> {
        let mut lines = body.lines();
        let head = lines.next()?;
        let mut lanes = Vec::new();
        for line in lines {
            let mut fields = line.splitn(3, ' ');
            lanes.push(LaneMark {
                queued: fields.next()?.parse().ok()?,
                ahead: fields.next()?.parse().ok()?,
                name: fields.next()?.to_string(),
            });
        }
        if let Some(anchor) = head.strip_prefix("in-flight ") {
            return Some(Record::InFlight {
                anchor: anchor.to_string(),
                lanes,
            });
        }
        if let Some(run) = head.strip_prefix("lines-in-flight ") {
            let (done, cut) = run.split_once(' ')?;
            return Some(Record::LinesInFlight {
                done: done.parse().ok()?,
                cut: cut.parse().ok()?,
                lanes,
            });
        }
        if let Some(done) = head.strip_prefix("lines-settled ") {
            return Some(Record::LinesSettled {
                done: done.parse().ok()?,
            });
        }
        (head == "settled").then_some(Record::Settled(lanes))
    }
}

/// FNV-1a: enough to tell a whole slot from one a crash cut short.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One source's journal.
#[derive(Debug)]
pub(super) struct Journal {
    file: File,
    /// The sequence number of the last record written.
    seq: u64,
}

impl Journal {
    /// A new, empty journal.
    pub fn new(source: &str) -> nix::Result<Journal> {
        let fd = memfd_create(
            format!("fifod-tee:{source}").as_str(),
            MFdFlags::MFD_CLOEXEC,
        )?;
        Ok(Journal {
            file: File::from(fd),
            seq: 0,
        })
    }

    /// A journal taken back from the store, and its last whole record.
    pub fn adopt(fd: OwnedFd) -> (Journal, Option<Record>) {
        let file = File::from(fd);
        let mut best: Option<(u64, Record)> = None;
        for slot in 0..2 {
            if let Some((seq, record)) = read_slot(&file, slot * SLOT)
                && best.as_ref().is_none_or(|(s, _)| seq > *s)
            {
                best = Some((seq, record));
            }
        }
        let seq = best.as_ref().map_or(0, |(s, _)| *s);
        (Journal { file, seq }, best.map(|(_, r)| r))
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The memfd: past `RECORDS`, a line log keeps its bytes in it.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Writes `record` over the older slot. False if it could not be
    /// written whole (nor would it fit): the caller must not rely on it.
    pub fn write(&mut self, record: &Record) -> bool {
        let seq = self.seq + 1;
        let body = record.encode();
        let text = format!(
            "{MAGIC}\n{seq} {} {}\n{body}",
            body.len(),
            checksum(body.as_bytes())
        );
        if text.len() as u64 > SLOT {
            return false;
        }
        match self.file.write_all_at(text.as_bytes(), (seq % 2) * SLOT) {
            Ok(()) => {
                self.seq = seq;
                true
            }
            Err(_) => false,
        }
    }
}

/// The record in the slot at `offset`, with its sequence number, if the
/// slot is whole.
fn read_slot(file: &File, offset: u64) -> Option<(u64, Record)> {
    let mut buf = vec![0u8; SLOT as usize];
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    let text = std::str::from_utf8(&buf[..got]).ok()?;
    let rest = text.strip_prefix(MAGIC)?.strip_prefix('\n')?;
    let (header, rest) = rest.split_once('\n')?;
    let mut fields = header.split(' ');
    let seq: u64 = fields.next()?.parse().ok()?;
    let len: usize = fields.next()?.parse().ok()?;
    let sum: u64 = fields.next()?.parse().ok()?;
    let body = rest.get(..len)?;
    (checksum(body.as_bytes()) == sum).then_some(())?;
    Some((seq, Record::decode(body)?))
}

impl Daemon {
    /// One fan-out round of up to `budget` bytes from source `s` under an
    /// fd store (see the module's comment): what each lane of `plan` took,
    /// and how many bytes the anchor consumed. `None` if the round could
    /// not be journaled or nothing moved; `splice_stop` then says why.
    pub(super) fn splice_journaled(
        &mut self,
        s: SourceId,
        source: BorrowedFd<'_>,
        plan: &[(LaneId, SinkId, Target)],
        budget: usize,
    ) -> Option<(Vec<Took>, usize)> {
        let queued = pipe::queued_bytes(source);
        if queued == 0 {
            // Empty, or at its end (no writer left): the copying path's read
            // tells which, and handles an end.
            if !pipe::hung_up(source) {
                self.splice_stop = Some(SpliceStop::SourceEmpty);
            }
            return None;
        }
        let active: Vec<(LaneId, SinkId, Target)> = plan
            .iter()
            .copied()
            .filter(|&(_, _, t)| t != Target::Skip)
            .collect();
        let mut n = self.relay.tee_len(&active, budget, queued);
        for &(l, _, t) in plan {
            if t == Target::Skip {
                n = n.min(self.relay.piped_ahead(l, s));
            }
        }
        // The anchor consumes what it takes, so it must be a lane that
        // never lets bytes go uncounted in its pipe.
        let anchor = plan.iter().position(|&(l, _, t)| {
            t != Target::Skip && self.relay.lanes()[l].policy() != WhenFull::DropNewest
        })?;
        if n == 0 {
            return None;
        }
        // What each lane may take; dropped bytes at the front of its pipe go
        // first, as the record measures the pipes.
        let mut wants = vec![0; plan.len()];
        for (i, &(l, k, t)) in plan.iter().enumerate() {
            if t == Target::Skip {
                continue;
            }
            wants[i] = n.min(self.relay.room_for(l, || n));
            if !self.let_go_unwanted(k, l) {
                return None;
            }
        }
        if !self.journal_ready(s) {
            return None;
        }
        let lanes = plan
            .iter()
            .map(|&(l, _, _)| LaneMark {
                name: self.lane_store_name(l),
                queued: self.lane_queued(l),
                ahead: self.relay.piped_ahead(l, s),
            })
            .collect();
        let anchor_lane = plan[anchor].0;
        let record = Record::InFlight {
            anchor: self.lane_store_name(anchor_lane),
            lanes,
        };
        if !self.write_journal(s, &record) {
            return None;
        }
        let mut took = vec![Took::default(); plan.len()];
        let mut covered = n;
        let mut limit = anchor_lane;
        for (i, &(l, _, t)) in plan.iter().enumerate() {
            if t == Target::Skip || i == anchor {
                continue;
            }
            let teed = match self.lane_pipes.get(l) {
                Some(p) if wants[i] > 0 => tee(
                    source,
                    p.write.as_fd(),
                    wants[i],
                    SpliceFFlags::SPLICE_F_NONBLOCK,
                )
                .unwrap_or(0),
                _ => 0,
            };
            took[i].piped = teed;
            let cover = self.relay.consumable(l, teed, wants[i], n);
            if cover < covered {
                covered = cover;
                limit = l;
            }
        }
        let want = covered.min(wants[anchor]);
        let moved = match self.lane_pipes.get(anchor_lane) {
            Some(p) if want > 0 => {
                splice(source, None, p.write.as_fd(), None, want, SPLICE_FLAGS).unwrap_or(0)
            }
            _ => 0,
        };
        took[anchor].piped = moved;
        if moved < covered {
            limit = anchor_lane;
        }
        if moved == 0 {
            self.splice_stop = Some(SpliceStop::LanePipeFull(limit));
        }
        Some((took, moved))
    }

    /// How many bytes `lane`'s pipe holds now.
    fn lane_queued(&self, lane: LaneId) -> usize {
        self.lane_pipes
            .get(lane)
            .map_or(0, |p| pipe::queued_bytes(p.read.as_fd()))
    }

    /// Makes sure source `s` has a journal in the store. False if it
    /// cannot: its fan-out then goes the way it does without a store.
    fn journal_ready(&mut self, s: SourceId) -> bool {
        let name = self.sources[s].name.clone();
        if self.journals.contains_key(&name) {
            return true;
        }
        let what = format!("tee:{name}");
        let Some(journal) = self.stored_journal(&what, &fdstore::journal_name(&name)) else {
            return false;
        };
        self.journals.insert(name, journal);
        true
    }

    /// Writes `record` into source `s`'s journal. False if it could not:
    /// the journal is then taken out of the store, as it is no longer true.
    fn write_journal(&mut self, s: SourceId, record: &Record) -> bool {
        let name = &self.sources[s].name;
        let Some(journal) = self.journals.get_mut(name) else {
            return false;
        };
        if journal.write(record) {
            return true;
        }
        error!("{name}: its fan-out journal cannot be written: it is not kept across a crash");
        let name = name.clone();
        self.journals.remove(&name);
        self.fd_store.remove(&fdstore::journal_name(&name));
        false
    }

    /// Records, once a round is over, how far each lane is ahead of `s`.
    pub(super) fn settle_journal(&mut self, s: SourceId) {
        if !self.journals.contains_key(&self.sources[s].name) {
            return;
        }
        let lanes: Vec<LaneMark> = self
            .relay
            .lanes_fed_by(s)
            .into_iter()
            .filter_map(|l| {
                let ahead = self.relay.piped_ahead(l, s);
                (ahead > 0).then(|| LaneMark {
                    name: self.lane_store_name(l),
                    queued: 0,
                    ahead,
                })
            })
            .collect();
        self.write_journal(s, &Record::Settled(lanes));
    }

    /// How far lanes are ahead of `s` may have changed outside a round (the
    /// copying path read it, or its stream was replaced): its journal, if
    /// it has one, says so at once.
    pub(super) fn journal_may_change(&mut self, s: SourceId) {
        if !self.journals.is_empty() && self.journals.contains_key(&self.sources[s].name) {
            self.settle_journal(s);
        }
    }

    /// Brings the journals in line with the sources after a reload: those
    /// of sources gone are taken out of the store, the others say again
    /// how far each lane is ahead (a reload may rename or settle lanes).
    pub(super) fn settle_journals(&mut self) {
        let sources: HashMap<String, SourceId> = self
            .sources
            .ids()
            .into_iter()
            .map(|s| (self.sources[s].name.clone(), s))
            .collect();
        let names: Vec<String> = self.journals.keys().cloned().collect();
        for name in names {
            match sources.get(&name) {
                Some(&s) => self.settle_journal(s),
                None => {
                    self.journals.remove(&name);
                    self.fd_store.remove(&fdstore::journal_name(&name));
                }
            }
        }
    }

    /// Takes back the journals an earlier fifod stored, once the lane
    /// pipes are back: each lane's pipe holds what it held, and what the
    /// journal says tells how much of it is ahead of its source (a round
    /// cut short by the crash is worked out from what the pipes hold).
    /// Each journal then says so, settled, before anything moves.
    pub(super) fn take_back_journals(
        &mut self,
        journals: std::collections::HashMap<String, OwnedFd>,
    ) {
        let lanes = self.lanes_by_store_name();
        for (source, fd) in journals {
            let stored_as = fdstore::journal_name(&source);
            let Some(s) = self.source_named(&source) else {
                self.fd_store.forget(&stored_as);
                continue;
            };
            let (journal, record) = Journal::adopt(fd);
            self.fd_store.known(&stored_as, 1);
            self.journals.insert(source.clone(), journal);
            // A lane that `s` does not feed now (routes were renumbered) is
            // not ahead of it.
            let fed = self.relay.lanes_fed_by(s);
            let lanes: HashMap<String, LaneId> = lanes
                .iter()
                .filter(|&(_, l)| fed.contains(l))
                .map(|(name, &l)| (name.clone(), l))
                .collect();
            let aheads: Vec<(LaneId, usize)> = match record {
                None | Some(Record::LinesInFlight { .. } | Record::LinesSettled { .. }) => {
                    Vec::new()
                }
                Some(Record::Settled(marks)) => marks
                    .iter()
                    .filter_map(|m| Some((*lanes.get(&m.name)?, m.ahead)))
                    .collect(),
                Some(Record::InFlight {
                    anchor,
                    lanes: marks,
                }) => {
                    let grew = |m: &LaneMark| {
                        lanes
                            .get(&m.name)
                            .map(|&l| self.lane_queued(l).saturating_sub(m.queued))
                    };
                    // What the anchor's pipe gained was consumed.
                    let consumed = marks
                        .iter()
                        .find(|m| m.name == anchor)
                        .and_then(grew)
                        .unwrap_or(0);
                    marks
                        .iter()
                        .filter(|m| m.name != anchor)
                        .filter_map(|m| {
                            let ahead = (m.ahead + grew(m)?).saturating_sub(consumed);
                            Some((*lanes.get(&m.name)?, ahead))
                        })
                        .collect()
                }
            };
            for (l, ahead) in aheads {
                if ahead > 0 {
                    info!(
                        "{}: {ahead} bytes in its pipe are ahead of {source}, which still has them",
                        self.lane_store_name(l).trim_start_matches(fdstore::PREFIX)
                    );
                    self.relay.recovered_ahead(l, s, ahead);
                }
            }
            self.settle_journal(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes() -> Vec<LaneMark> {
        vec![
            LaneMark {
                name: "fifod/lane/r/a".into(),
                queued: 10,
                ahead: 0,
            },
            LaneMark {
                name: "fifod/lane/r/b b".into(),
                queued: 0,
                ahead: 7,
            },
        ]
    }

    #[test]
    fn the_last_whole_record_is_read_back() {
        let mut journal = Journal::new("in").unwrap();
        let first = Record::Settled(lanes());
        let second = Record::InFlight {
            anchor: "fifod/lane/r/a".into(),
            lanes: lanes(),
        };
        assert!(journal.write(&first));
        assert!(journal.write(&second));
        let fd = journal.fd().try_clone_to_owned().unwrap();
        let (adopted, record) = Journal::adopt(fd);
        assert_eq!(record, Some(second));
        assert_eq!(adopted.seq, 2);
    }

    #[test]
    fn a_slot_cut_short_leaves_the_one_before() {
        let mut journal = Journal::new("in").unwrap();
        let first = Record::Settled(lanes());
        assert!(journal.write(&first));
        // Half of the next record, as a crash mid-write would leave it.
        let next = Record::InFlight {
            anchor: "fifod/lane/r/a".into(),
            lanes: lanes(),
        };
        let body = next.encode();
        let text = format!(
            "{MAGIC}\n2 {} {}\n{body}",
            body.len(),
            checksum(body.as_bytes())
        );
        journal
            .file
            .write_all_at(&text.as_bytes()[..text.len() - 5], 0)
            .unwrap();
        let (_, record) = Journal::adopt(journal.fd().try_clone_to_owned().unwrap());
        assert_eq!(record, Some(first));
    }

    #[test]
    fn an_empty_journal_has_no_record() {
        let journal = Journal::new("in").unwrap();
        let (_, record) = Journal::adopt(journal.fd().try_clone_to_owned().unwrap());
        assert_eq!(record, None);
    }
}
