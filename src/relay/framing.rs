//! Line framing: each source's line in progress per route, whole lines
//! passed on, lines longer than `max_line` cut in pieces and counted.

use super::{Relay, SinkId, SourceId};

impl Relay {
    /// Lines longer than `max_line` that route `route` passed on in pieces.
    pub fn long_lines(&self, route: usize) -> u64 {
        self.routes[route].long_lines
    }

    /// Bytes of incomplete lines waiting in route `route`'s sources.
    pub fn partial_bytes(&self, route: usize) -> usize {
        self.routes[route].partial.iter().map(Vec::len).sum()
    }

    /// Cuts bytes read from `source`, the `position`th source of line route
    /// `r`, into lines: whole lines go on at once, the rest waits as the
    /// source's line in progress until it outgrows `max_line`.
    pub(super) fn ingest_lines(
        &mut self,
        r: usize,
        position: usize,
        source: SourceId,
        data: &[u8],
        max_line: usize,
        write_now: &mut impl FnMut(SinkId, &[u8]) -> usize,
    ) {
        let complete = memchr::memrchr(b'\n', data).map_or(0, |i| i + 1);
        if complete > 0 {
            let counted = std::mem::take(&mut self.routes[r].in_long_line[position]);
            if self.routes[r].partial[position].is_empty() {
                self.push_lines(r, source, &data[..complete], max_line, counted, write_now);
            } else {
                let mut lines = std::mem::take(&mut self.routes[r].partial[position]);
                lines.extend_from_slice(&data[..complete]);
                self.push_lines(r, source, &lines, max_line, counted, write_now);
                lines.clear();
                self.routes[r].partial[position] = lines;
            }
        }
        self.routes[r].partial[position].extend_from_slice(&data[complete..]);
        // A line that outgrows max_line goes on in pieces, without waiting.
        while self.routes[r].partial[position].len() >= max_line {
            let piece: Vec<u8> = self.routes[r].partial[position].drain(..max_line).collect();
            if !std::mem::replace(&mut self.routes[r].in_long_line[position], true) {
                self.routes[r].long_lines += 1;
            }
            self.push(r, source, &piece, write_now);
        }
    }

    /// Pushes whole lines, cutting those longer than `max_line` into pieces.
    /// `first_counted`: the first line already went on in pieces.
    fn push_lines(
        &mut self,
        r: usize,
        source: SourceId,
        lines: &[u8],
        max_line: usize,
        mut first_counted: bool,
        write_now: &mut impl FnMut(SinkId, &[u8]) -> usize,
    ) {
        let mut run_start = 0;
        let mut line_start = 0;
        for newline in memchr::memchr_iter(b'\n', lines) {
            let end = newline + 1;
            if end - line_start > max_line {
                if run_start < line_start {
                    self.push(r, source, &lines[run_start..line_start], write_now);
                }
                if !first_counted {
                    self.routes[r].long_lines += 1;
                }
                let mut piece = line_start;
                while end - piece > max_line {
                    self.push(r, source, &lines[piece..piece + max_line], write_now);
                    piece += max_line;
                }
                self.push(r, source, &lines[piece..end], write_now);
                run_start = end;
            }
            line_start = end;
            first_counted = false;
        }
        if run_start < lines.len() {
            self.push(r, source, &lines[run_start..], write_now);
        }
    }

    /// Whether `source` has a line in progress on some route.
    pub fn has_partial_lines(&self, source: SourceId) -> bool {
        self.source_routes[source]
            .iter()
            .any(|&(r, position)| !self.routes[r].partial[position].is_empty())
    }

    /// Passes on `source`'s lines in progress as they are, without a newline.
    pub fn flush_lines_of(&mut self, source: SourceId) {
        for i in 0..self.source_routes[source].len() {
            let (r, position) = self.source_routes[source][i];
            self.flush_partial(r, position);
        }
    }

    pub(super) fn flush_partial(&mut self, r: usize, position: usize) {
        self.routes[r].in_long_line[position] = false;
        let piece = std::mem::take(&mut self.routes[r].partial[position]);
        if !piece.is_empty() {
            let source = self.routes[r].sources[position];
            self.push(r, source, &piece, &mut |_, _| 0);
        }
    }
}
