use super::*;

mod carry;
mod ends;
mod lines;
mod logged;
mod pipes;
mod policies;

impl Relay {
    /// `pending`, for lanes that hold everything in memory.
    fn pending_bytes(&self, sink: SinkId) -> Option<(LaneId, &[u8])> {
        self.pending(sink).map(|(lane, out)| match out {
            Out::Bytes(bytes) => (lane, bytes),
            Out::Piped(n) => panic!("lane {lane} has {n} bytes in a pipe"),
        })
    }
}

fn route(sources: &[usize], sinks: &[usize], buffer: usize, when_full: WhenFull) -> RouteSpec {
    RouteSpec {
        sources: sources.to_vec(),
        sinks: sinks.to_vec(),
        buffer,
        when_full,
        forward_eof: false,
        max_line: None,
    }
}

fn lines(
    sources: &[usize],
    sinks: &[usize],
    buffer: usize,
    when_full: WhenFull,
    max_line: usize,
) -> RouteSpec {
    RouteSpec {
        max_line: Some(max_line),
        ..route(sources, sinks, buffer, when_full)
    }
}

/// Writes everything pending for `sink` into `out`, `chunk` bytes at a time.
fn drain(relay: &mut Relay, sink: SinkId, out: &mut Vec<u8>, chunk: usize) {
    while let Some((lane, bytes)) = relay.pending_bytes(sink) {
        let n = bytes.len().min(chunk);
        out.extend_from_slice(&bytes[..n]);
        relay.delivered(lane, n);
    }
}

fn check_identity(relay: &Relay) {
    for lane in relay.lanes() {
        let s = lane.stats();
        assert_eq!(
            s.accepted,
            s.delivered + s.dropped + lane.held() as u64,
            "{lane:?}"
        );
        if lane.lines() {
            let held = lane.held.iter().filter(|&&b| b == b'\n').count() as u64;
            assert_eq!(lane.held_lines(), held, "{lane:?}");
        }
    }
}
