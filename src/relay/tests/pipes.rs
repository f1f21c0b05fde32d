use super::*;

/// A model of the daemon's lane pipes: what `spliced` says went into a
/// pipe is appended here, what `pending` says is piped is taken here.
struct Pipes(Vec<Vec<u8>>);

impl Pipes {
    /// Everything pending for `sink`, piped bytes included, in write order.
    fn drain(&mut self, relay: &mut Relay, sink: SinkId, out: &mut Vec<u8>, chunk: usize) {
        while let Some((lane, pending)) = relay.pending(sink) {
            let n = match pending {
                Out::Bytes(bytes) => {
                    let n = bytes.len().min(chunk);
                    out.extend_from_slice(&bytes[..n]);
                    n
                }
                Out::Piped(n) => {
                    let n = n.min(chunk);
                    out.extend(self.0[lane].drain(..n));
                    n
                }
            };
            relay.delivered(lane, n);
        }
    }
}

#[test]
fn piped_bytes_go_first_and_copied_ones_after_them() {
    let mut relay = Relay::new(&[route(&[0], &[0], 100, WhenFull::Block)], 1, 1);
    let mut pipes = Pipes(vec![Vec::new()]);
    assert_eq!(
        relay.zero_copy_lanes(0),
        Some(vec![(0, 0, Target::Sink)]),
        "an idle sink takes bytes directly"
    );
    // The sink took 2 bytes, the pipe the next 3.
    relay.spliced(0, [0], &[Took { sent: 2, piped: 3 }], 5);
    pipes.0[0].extend(b"cde");
    assert_eq!(relay.lanes()[0].held(), 3);
    assert_eq!(relay.read_budget(0, 1000), 97, "piped bytes use the buffer");
    assert_eq!(relay.zero_copy_lanes(0), Some(vec![(0, 0, Target::Pipe)]));
    // A copy (a source that cannot be spliced) lands behind the pipe.
    relay.ingest(0, b"fg", |_, _| panic!("the lane is not idle"));
    assert_eq!(
        relay.zero_copy_lanes(0),
        None,
        "memory bytes wait for no pipe"
    );
    assert!(!relay.may_pipe(0));
    let mut out = b"ab".to_vec();
    pipes.drain(&mut relay, 0, &mut out, 2);
    assert_eq!(out, b"abcdefg");
    check_identity(&relay);
    assert_eq!(relay.lanes()[0].stats().delivered, 7);
    assert_eq!(relay.zero_copy_lanes(0), Some(vec![(0, 0, Target::Sink)]));
}

#[test]
fn bytes_piped_ahead_of_the_source_are_counted_once_consumed() {
    let mut relay = Relay::new(&[route(&[0], &[0, 1], 100, WhenFull::Block)], 1, 2);
    let mut pipes = Pipes(vec![Vec::new(), Vec::new()]);
    // Sink 0 took 4 directly; sink 1 was full and its pipe took 6; only
    // 4 were consumed from the source.
    relay.spliced(
        0,
        [0, 1],
        &[Took { sent: 4, piped: 0 }, Took { sent: 0, piped: 6 }],
        4,
    );
    pipes.0[1].extend(b"abcdef");
    assert_eq!(relay.ahead_of(0), 2);
    assert_eq!(relay.zero_copy_lanes(0), None, "a lane ahead needs a copy");
    assert_eq!(relay.lanes()[1].in_pipe(), 6);
    check_identity(&relay);
    // The copying path reads on: lane 1 skips what its pipe has.
    let mut outs = [b"abcd".to_vec(), Vec::new()];
    relay.ingest(0, b"efgh", |sink, bytes| {
        outs[sink].extend_from_slice(bytes);
        bytes.len()
    });
    assert_eq!(relay.ahead_of(0), 0);
    pipes.drain(&mut relay, 1, &mut outs[1], 100);
    assert_eq!(outs[0], b"abcdefgh");
    assert_eq!(outs[1], b"abcdefgh");
    check_identity(&relay);
}

#[test]
fn bytes_ahead_of_one_source_are_not_skipped_in_another() {
    // Sink 0 is fed by sources 0 and 1; source 0 also feeds sink 1.
    let routes = [
        route(&[0, 1], &[0], 100, WhenFull::Block),
        route(&[0], &[1], 100, WhenFull::Block),
    ];
    let mut relay = Relay::new(&routes, 2, 2);
    let mut outs = [b"abcdefghij".to_vec(), b"abcd".to_vec()];
    relay.spliced(
        0,
        [0, 1],
        &[Took { sent: 10, piped: 0 }, Took { sent: 4, piped: 0 }],
        4,
    );
    assert_eq!(relay.ahead_of(0), 6);
    assert_eq!(relay.ahead_of(1), 0, "source 1 owes nothing");
    let mut write = |sink: SinkId, bytes: &[u8]| {
        outs[sink].extend_from_slice(bytes);
        bytes.len()
    };
    relay.ingest(1, b"XYZ", &mut write);
    relay.ingest(0, b"efghij", &mut write);
    assert_eq!(outs[0], b"abcdefghijXYZ");
    assert_eq!(outs[1], b"abcdefghij");
    assert_eq!(relay.ahead_of(0), 0);
    check_identity(&relay);
}

#[test]
fn bytes_piped_ahead_of_one_source_leave_no_room_for_another() {
    let routes = [
        route(&[0, 1], &[0], 100, WhenFull::Block),
        route(&[0], &[1], 100, WhenFull::Block),
    ];
    let mut relay = Relay::new(&routes, 2, 2);
    relay.spliced(
        0,
        [0, 1],
        &[
            Took {
                sent: 0,
                piped: 100,
            },
            Took { sent: 0, piped: 0 },
        ],
        0,
    );
    assert_eq!(relay.read_budget(1, 1000), 0, "the pipe is full already");
    assert_eq!(
        relay.read_budget(0, 1000),
        100,
        "source 0's own bytes are there"
    );
    relay.ingest(0, &[b'a'; 100], |_, _| 0);
    assert_eq!(relay.lanes()[0].held(), 100);
    assert_eq!(relay.lanes()[1].held(), 100);
    check_identity(&relay);
}

#[test]
fn bytes_ahead_of_a_stream_that_ends_count_as_taken() {
    let mut relay = Relay::new(&[route(&[0], &[0, 1], 100, WhenFull::Block)], 1, 2);
    relay.spliced(
        0,
        [0, 1],
        &[Took { sent: 5, piped: 0 }, Took { sent: 1, piped: 3 }],
        2,
    );
    relay.commit_ahead(0);
    assert_eq!(relay.ahead_of(0), 0);
    assert_eq!(relay.lanes()[0].stats().delivered, 5);
    assert_eq!(relay.lanes()[1].stats().delivered, 1);
    assert_eq!(relay.lanes()[1].held(), 3);
    assert_eq!(relay.lanes()[1].in_pipe(), 3);
    check_identity(&relay);
}

#[test]
fn a_sink_takes_turns_between_a_piped_lane_and_a_copied_one() {
    // Source 0's route blocks (a pipe); source 1's drops the oldest
    // (memory); both feed sink 0.
    let routes = [
        route(&[0], &[0], 100, WhenFull::Block),
        route(&[1], &[0], 100, WhenFull::DropOldest),
    ];
    let mut relay = Relay::new(&routes, 2, 1);
    let mut pipes = Pipes(vec![Vec::new(), Vec::new()]);
    relay.ingest(1, b"xyz", |_, _| 0);
    assert_eq!(relay.zero_copy_lanes(0), Some(vec![(0, 0, Target::Pipe)]));
    relay.spliced(0, [0], &[Took { sent: 0, piped: 3 }], 3);
    pipes.0[0].extend(b"abc");
    relay.ingest(1, b"XYZ", |_, _| panic!("the sink is busy"));
    let mut out = Vec::new();
    pipes.drain(&mut relay, 0, &mut out, 2);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.len(), 9);
    assert_eq!(text.replace(['x', 'y', 'z', 'X', 'Y', 'Z'], ""), "abc");
    assert_eq!(text.replace(['a', 'b', 'c'], ""), "xyzXYZ");
    assert!(!text.starts_with("abc"), "no turns taken: {text}");
    check_identity(&relay);
}

#[test]
fn an_end_behind_lost_piped_bytes_moves_back() {
    let spec = RouteSpec {
        forward_eof: true,
        ..route(&[0], &[0], 100, WhenFull::Block)
    };
    let mut relay = Relay::new(&[spec], 1, 1);
    relay.spliced(0, [0], &[Took { sent: 0, piped: 4 }], 4);
    assert!(relay.source_ended(0));
    assert!(!relay.end_due(0));
    assert_eq!(relay.pipe_lost(0), 4);
    assert!(
        relay.end_due(0),
        "the end is due once the lost bytes are gone"
    );
    check_identity(&relay);
}

#[test]
fn piped_bytes_are_dropped_counted_moved_to_memory_or_lost() {
    let mut relay = Relay::new(&[route(&[0], &[0], 100, WhenFull::Block)], 1, 1);
    relay.spliced(0, [0], &[Took { sent: 0, piped: 5 }], 5);
    relay.ingest(0, b"fg", |_, _| 0);
    assert_eq!(relay.discard(0), 7);
    assert_eq!(relay.lanes()[0].stats().dropped, 7);
    check_identity(&relay);
    // A reload reads the pipe back: its bytes come first, in memory.
    relay.spliced(0, [0], &[Took { sent: 0, piped: 3 }], 3);
    relay.ingest(0, b"de", |_, _| 0);
    relay.unpiped(0, b"abc");
    assert!(!relay.may_pipe(0));
    check_identity(&relay);
    let mut out = Vec::new();
    drain(&mut relay, 0, &mut out, 100);
    assert_eq!(out, b"abcde");
    // A pipe that gave back only part: the rest is counted as dropped.
    let mut relay = Relay::new(&[route(&[0], &[0], 100, WhenFull::Block)], 1, 1);
    relay.spliced(0, [0], &[Took { sent: 0, piped: 4 }], 4);
    relay.unpiped(0, b"ab");
    assert_eq!(relay.lanes()[0].stats().dropped, 2);
    check_identity(&relay);
    // A pipe that is lost: what it held is dropped; what it had ahead
    // of the source is still in the source and comes again.
    let mut relay = Relay::new(&[route(&[0], &[0], 100, WhenFull::Block)], 1, 1);
    relay.spliced(0, [0], &[Took { sent: 0, piped: 5 }], 3);
    assert_eq!(relay.pipe_lost(0), 3);
    assert_eq!(relay.lanes()[0].stats().dropped, 3);
    assert_eq!(relay.ahead_of(0), 0);
    assert_eq!(relay.lanes()[0].in_pipe(), 0);
    check_identity(&relay);
}

#[test]
fn ends_wait_behind_piped_bytes() {
    let spec = RouteSpec {
        forward_eof: true,
        ..route(&[0], &[0], 100, WhenFull::Block)
    };
    let mut relay = Relay::new(&[spec], 1, 1);
    let mut pipes = Pipes(vec![b"abc".to_vec()]);
    relay.spliced(0, [0], &[Took { sent: 0, piped: 3 }], 3);
    assert!(relay.source_ended(0));
    assert!(!relay.end_due(0), "three bytes come first");
    assert_eq!(relay.pending(0), Some((0, Out::Piped(3))));
    // The next session's bytes may go into the pipe, behind the end.
    relay.spliced(0, [0], &[Took { sent: 0, piped: 2 }], 2);
    pipes.0[0].extend(b"de");
    assert_eq!(
        relay.pending(0),
        Some((0, Out::Piped(3))),
        "not past the end"
    );
    let mut out = Vec::new();
    pipes.drain(&mut relay, 0, &mut out, 100);
    assert_eq!(out, b"abc");
    assert!(relay.end_due(0));
    relay.end_delivered(0);
    pipes.drain(&mut relay, 0, &mut out, 100);
    assert_eq!(out, b"abcde");
    check_identity(&relay);
}

#[test]
fn byte_routes_use_pipes() {
    let routes = [
        route(&[0], &[0], 100, WhenFull::DropOldest),
        lines(&[1], &[1], 100, WhenFull::Block, 50),
        route(&[2], &[2], 100, WhenFull::Block),
        route(&[3], &[3], 100, WhenFull::DropNewest),
    ];
    let relay = Relay::new(&routes, 4, 4);
    assert!(relay.may_pipe(0));
    assert!(!relay.may_pipe(1));
    assert!(relay.may_pipe(2));
    assert!(relay.may_pipe(3));
    assert_eq!(relay.zero_copy_lanes(1), None, "line routes are read");
}

#[test]
fn a_drop_oldest_lane_drops_from_the_front_of_its_pipe() {
    let mut relay = Relay::new(&[route(&[0], &[0], 10, WhenFull::DropOldest)], 1, 1);
    let mut pipes = Pipes(vec![Vec::new()]);
    relay.spliced(0, [0], &[Took { sent: 0, piped: 8 }], 8);
    pipes.0[0].extend(b"01234567");
    // Room for 6 more: the 4 oldest go.
    assert_eq!(relay.make_room(0, 6), 4);
    assert_eq!(relay.lanes()[0].unwanted(), 4);
    assert_eq!(relay.lanes()[0].in_pipe(), 8);
    pipes.0[0].drain(..4);
    relay.let_go(0, 4);
    relay.spliced(0, [0], &[Took { sent: 0, piped: 6 }], 6);
    pipes.0[0].extend(b"abcdef");
    check_identity(&relay);
    // A copy behind the pipe pushes out the oldest again, from the pipe.
    relay.ingest(0, b"XY", |_, _| 0);
    assert_eq!(relay.lanes()[0].unwanted(), 2);
    pipes.0[0].drain(..2);
    relay.let_go(0, 2);
    let mut out = Vec::new();
    pipes.drain(&mut relay, 0, &mut out, 3);
    assert_eq!(out, b"67abcdefXY");
    assert_eq!(relay.lanes()[0].stats().dropped, 6);
    check_identity(&relay);
}

#[test]
fn unpiping_skips_the_dropped_front() {
    let mut relay = Relay::new(&[route(&[0], &[0], 4, WhenFull::DropOldest)], 1, 1);
    relay.spliced(0, [0], &[Took { sent: 0, piped: 4 }], 4);
    relay.make_room(0, 2);
    relay.unpiped(0, b"0123");
    assert_eq!(relay.lanes()[0].unwanted(), 0);
    let mut out = Vec::new();
    drain(&mut relay, 0, &mut out, 10);
    assert_eq!(out, b"23");
    check_identity(&relay);
}

#[test]
fn a_full_drop_newest_lane_drops_what_it_did_not_take() {
    let mut relay = Relay::new(&[route(&[0], &[0, 1], 10, WhenFull::DropNewest)], 1, 2);
    let mut pipes = Pipes(vec![Vec::new(), Vec::new()]);
    // Sink 0 took all 16 bytes; sink 1 was full: its pipe took 10 (its
    // buffer), and the other 6 are dropped for it.
    relay.spliced(
        0,
        [0, 1],
        &[Took { sent: 16, piped: 0 }, Took { sent: 0, piped: 10 }],
        16,
    );
    pipes.0[1].extend(b"0123456789");
    assert_eq!(relay.room(1), 0);
    assert_eq!(relay.lanes()[1].stats().dropped, 6);
    check_identity(&relay);
    // A copy behind the pipe (the copying path) finds no room either.
    relay.ingest(0, b"abc", |_, bytes| bytes.len());
    assert_eq!(relay.lanes()[1].stats().dropped, 9);
    let mut out = Vec::new();
    pipes.drain(&mut relay, 1, &mut out, 4);
    assert_eq!(out, b"0123456789");
    check_identity(&relay);
}
