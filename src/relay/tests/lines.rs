use super::*;

/// A tiny deterministic generator, so the tests need no crate.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn lines_from_several_sources_never_interleave() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let route = lines(&[0, 1, 2], &[0], 1 << 20, WhenFull::Block, 1 << 16);
    let mut relay = Relay::new(&[route], 3, 1);
    let mut streams: Vec<Vec<u8>> = Vec::new();
    for source in 0..3u8 {
        let mut stream = Vec::new();
        for n in 0..200 {
            let len = rng.below(300) as usize;
            stream.extend(format!("{source}:{n}:").bytes());
            stream.extend(std::iter::repeat_n(b'a' + source, len));
            stream.push(b'\n');
        }
        streams.push(stream);
    }
    let mut offsets = [0usize; 3];
    let mut out = Vec::new();
    while offsets.iter().zip(&streams).any(|(o, s)| *o < s.len()) {
        let source = rng.below(3) as usize;
        let stream = &streams[source];
        let take = (rng.below(700) as usize + 1).min(stream.len() - offsets[source]);
        let piece = &stream[offsets[source]..offsets[source] + take];
        offsets[source] += take;
        // The sink takes a random part at once, so writes end mid-line.
        relay.ingest(source, piece, |_, bytes| {
            let n = (rng.below(bytes.len() as u64 + 1) as usize).min(bytes.len());
            out.extend_from_slice(&bytes[..n]);
            n
        });
        let chunk = rng.below(500) as usize + 1;
        drain(&mut relay, 0, &mut out, chunk);
    }
    let mut seen = [0usize; 3];
    for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let text = std::str::from_utf8(line).unwrap();
        let mut parts = text.splitn(3, ':');
        let source: usize = parts.next().unwrap().parse().unwrap();
        let n: usize = parts.next().unwrap().parse().unwrap();
        assert_eq!(n, seen[source], "lines of source {source} out of order");
        let body = parts.next().unwrap();
        assert!(
            body.bytes().all(|b| b == b'a' + source as u8),
            "mixed line: {text}"
        );
        seen[source] += 1;
    }
    assert_eq!(seen, [200, 200, 200]);
    let stats = relay.lanes()[0].stats();
    assert_eq!(stats.lines_accepted, 600);
    assert_eq!(stats.lines_delivered, 600);
    check_identity(&relay);
}

#[test]
fn a_long_line_goes_on_in_pieces_and_is_counted() {
    let mut relay = Relay::new(&[lines(&[0], &[0], 4096, WhenFull::Block, 10)], 1, 1);
    relay.ingest(0, b"short\n0123456789abcdefghij", |_, _| 0);
    relay.ingest(0, b"klm\nxy", |_, _| 0);
    let mut out = Vec::new();
    drain(&mut relay, 0, &mut out, 100);
    assert_eq!(out, b"short\n0123456789abcdefghijklm\n");
    assert_eq!(relay.long_lines(0), 1);
    assert_eq!(relay.partial_bytes(0), 2);
    // A whole long line inside one read is cut too.
    relay.ingest(0, b"\n0123456789ABCDEFGHIJ0123\n", |_, _| 0);
    drain(&mut relay, 0, &mut out, 100);
    assert!(out.ends_with(b"xy\n0123456789ABCDEFGHIJ0123\n"));
    assert_eq!(relay.long_lines(0), 2);
}

#[test]
fn an_ended_source_passes_its_last_partial_line_without_a_newline() {
    let mut relay = Relay::new(&[lines(&[0, 1], &[0], 4096, WhenFull::Block, 100)], 2, 1);
    relay.ingest(0, b"one\ntw", |_, _| 0);
    relay.source_ended(0);
    relay.ingest(1, b"three\n", |_, _| 0);
    let mut out = Vec::new();
    drain(&mut relay, 0, &mut out, 100);
    assert_eq!(out, b"one\ntwthree\n");
    assert_eq!(relay.lanes()[0].stats().lines_accepted, 2);
    check_identity(&relay);
}

#[test]
fn line_policies_drop_whole_lines() {
    let mut relay = Relay::new(&[lines(&[0], &[0], 10, WhenFull::DropNewest, 10)], 1, 1);
    relay.ingest(0, b"aaa\nbbb\nccc\nddd\n", |_, _| 0);
    let mut out = Vec::new();
    drain(&mut relay, 0, &mut out, 100);
    assert_eq!(out, b"aaa\nbbb\n");
    assert_eq!(relay.lanes()[0].stats().lines_dropped, 2);
    check_identity(&relay);

    let mut relay = Relay::new(&[lines(&[0], &[0], 10, WhenFull::DropOldest, 10)], 1, 1);
    // The first line is half written when the rest comes.
    relay.ingest(0, b"aaa\nbbb\n", |_, bytes| {
        assert_eq!(bytes, b"aaa\nbbb\n");
        2
    });
    relay.ingest(0, b"ccc\nddd\n", |_, _| 0);
    let mut out = b"aa".to_vec();
    drain(&mut relay, 0, &mut out, 100);
    assert_eq!(
        out, b"aaa\nccc\nddd\n",
        "never the line in progress, whole lines only"
    );
    assert_eq!(relay.lanes()[0].stats().lines_dropped, 1);
    check_identity(&relay);
}

#[test]
fn a_line_in_progress_keeps_its_sink_across_routes() {
    let routes = [
        lines(&[0], &[0], 100, WhenFull::Block, 100),
        lines(&[1], &[0], 100, WhenFull::Block, 100),
    ];
    let mut relay = Relay::new(&routes, 2, 1);
    relay.ingest(0, b"first line\n", |_, _| 3);
    relay.ingest(1, b"other\n", |_, _| panic!("the sink is mid-line"));
    let (lane, bytes) = relay.pending_bytes(0).unwrap();
    assert_eq!((lane, bytes), (0, &b"st line\n"[..]));
    relay.delivered(0, 2);
    assert_eq!(relay.pending_bytes(0).unwrap().0, 0, "still mid-line");
    relay.delivered(0, 6);
    assert_eq!(relay.pending_bytes(0).unwrap(), (1, &b"other\n"[..]));
}

#[test]
fn line_budget_leaves_room_for_the_line_in_progress() {
    let mut relay = Relay::new(&[lines(&[0], &[0], 4096, WhenFull::Block, 1000)], 1, 1);
    relay.ingest(0, &[b'x'; 300], |_, _| 0);
    assert_eq!(relay.read_budget(0, 1 << 20), 4096 - 300);
}
