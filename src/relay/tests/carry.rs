//! Relay::carry (reload)

use super::*;

/// Everything pending for `sink`, as (lane, bytes) pieces in write order,
/// `chunk` bytes at a time; stops at an end that is due.
fn drain_by_lane(relay: &mut Relay, sink: SinkId, chunk: usize) -> Vec<(LaneId, Vec<u8>)> {
    let mut pieces: Vec<(LaneId, Vec<u8>)> = Vec::new();
    while let Some((lane, bytes)) = relay.pending_bytes(sink) {
        let n = bytes.len().min(chunk);
        match pieces.last_mut() {
            Some((l, v)) if *l == lane => v.extend_from_slice(&bytes[..n]),
            _ => pieces.push((lane, bytes[..n].to_vec())),
        }
        relay.delivered(lane, n);
    }
    pieces
}

#[test]
fn carry_keeps_an_end_that_drops_made_due() {
    let spec = RouteSpec {
        forward_eof: true,
        ..route(&[0], &[0], 4, WhenFull::DropOldest)
    };
    let mut old = Relay::new(std::slice::from_ref(&spec), 1, 1);
    old.ingest(0, b"ab", |_, _| 0);
    assert!(old.source_ended(0));
    // The next session pushes the end's bytes out: it is due, not lost.
    old.ingest(0, b"cdef", |_, _| 0);
    assert!(old.end_due(0));
    let map = RelayMap {
        routes: &[Some(0)],
        sources: &[Some(0)],
        sinks: &[Some(0)],
    };
    let (mut relay, _) = Relay::carry(old, &[spec], &map, (1, 1));
    assert!(relay.end_due(0));
    relay.end_delivered(0);
    let mut out = Vec::new();
    drain(&mut relay, 0, &mut out, 10);
    assert_eq!(out, b"cdef");
    check_identity(&relay);
}

#[test]
fn carry_carries_an_unchanged_route_whole() {
    // Old: one line route that forwards ends, source 0 -> sink 0.
    let old_spec = RouteSpec {
        forward_eof: true,
        ..lines(&[0], &[0], 100, WhenFull::Block, 100)
    };
    let mut old = Relay::new(&[old_spec], 1, 1);
    old.ingest(0, b"one\n", |_, _| 0);
    assert!(old.source_ended(0));
    old.ingest(0, b"two\nthr", |_, _| 0);
    // Two bytes of "one\n" went out: the lane is mid-line, owning sink 0.
    assert_eq!(old.pending_bytes(0), Some((0, &b"one\n"[..])));
    old.delivered(0, 2);
    let old_stats = old.lanes()[0].stats();
    assert_eq!((old_stats.accepted, old_stats.delivered), (8, 2));

    // New: another route first, and the same route at other indexes with
    // a bigger buffer.
    let carried = RouteSpec {
        forward_eof: true,
        ..lines(&[1], &[1], 4096, WhenFull::Block, 100)
    };
    let map = RelayMap {
        routes: &[Some(1)],
        sources: &[Some(1)],
        sinks: &[Some(1)],
    };
    let routes = [route(&[0], &[0], 100, WhenFull::Block), carried];
    let (mut relay, leftovers) = Relay::carry(old, &routes, &map, (2, 2));
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The carried lane keeps its id; the new route's lane gets another.
    assert_eq!(relay.lanes_of_route(1), [0]);
    assert_eq!(relay.lanes_of_route(0), [1]);
    let lane = &relay.lanes()[0];
    assert_eq!(lane.held(), 6, "e\\ntwo\\n");
    assert_eq!(lane.stats(), old_stats, "counters carried as they were");
    assert_eq!(lane.held_lines(), 2);
    assert_eq!(relay.partial_bytes(1), 3, "the line in progress \"thr\"");
    check_identity(&relay);
    // The rest of the half-written line first, then the end, then the
    // next session; the source's line in progress goes on where it was.
    assert_eq!(relay.pending_bytes(1), Some((0, &b"e\n"[..])));
    relay.delivered(0, 2);
    assert!(relay.pending_bytes(1).is_none(), "nothing before the end");
    assert!(relay.end_due(1));
    relay.end_delivered(1);
    relay.ingest(1, b"ee\n", |_, _| 0);
    let mut out = Vec::new();
    drain(&mut relay, 1, &mut out, 100);
    assert_eq!(out, b"two\nthree\n");
    assert!(!relay.end_pending(1));
    let s = relay.lanes()[0].stats();
    assert_eq!((s.accepted, s.delivered, s.lines_delivered), (14, 14, 3));
    assert_eq!(relay.lanes()[1].stats(), LaneStats::default());
    check_identity(&relay);
}

#[test]
fn carry_merges_a_changed_routes_bytes_into_the_lane_of_the_same_sink() {
    // Old: two routes into sink 0, and one into sink 1.
    let mut old = Relay::new(
        &[
            route(&[0], &[0], 100, WhenFull::Block),
            route(&[1], &[0], 100, WhenFull::Block),
            route(&[2], &[1], 100, WhenFull::Block),
        ],
        3,
        2,
    );
    old.ingest(0, b"first", |_, _| 0);
    old.ingest(1, b"second", |_, _| 0);
    old.ingest(2, b"other", |_, _| 0);
    let kept_stats = old.lanes()[2].stats();
    // New: sources 0 and 1 merged into one route (a changed route), the
    // third route unchanged but now listed first.
    let routes = [
        route(&[2], &[1], 100, WhenFull::Block),
        route(&[0, 1, 3], &[0], 100, WhenFull::Block),
    ];
    let map = RelayMap {
        routes: &[None, None, Some(0)],
        sources: &[Some(0), Some(1), Some(2)],
        sinks: &[Some(0), Some(1)],
    };
    let (mut relay, leftovers) = Relay::carry(old, &routes, &map, (4, 2));
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The unchanged route keeps its lane (2); the changed one's lane takes
    // the first id free.
    assert_eq!(relay.lanes_of_route(0), [2]);
    assert_eq!(relay.lanes_of_route(1), [0]);
    assert!(relay.lanes()[1].is_retired());
    // Held bytes of both changed lanes, each in order, one after the other.
    assert_eq!(
        drain_by_lane(&mut relay, 0, 3),
        [(0, b"firstsecond".to_vec())]
    );
    assert_eq!(drain_by_lane(&mut relay, 1, 100), [(2, b"other".to_vec())]);
    // A changed route starts its counters over with what it inherited;
    // an unchanged one keeps them.
    let merged = relay.lanes()[0].stats();
    assert_eq!((merged.accepted, merged.delivered), (11, 11));
    let mut expected = kept_stats;
    expected.delivered += 5;
    assert_eq!(relay.lanes()[2].stats(), expected);
    check_identity(&relay);
    // The merged route goes on, with its new source too.
    let mut offered = Vec::new();
    relay.ingest(3, b"new", |sink, bytes| {
        offered.push((sink, bytes.to_vec()));
        bytes.len()
    });
    assert_eq!(offered, [(0, b"new".to_vec())]);
    check_identity(&relay);
}

#[test]
fn carry_returns_bytes_for_a_sink_nothing_feeds_any_more() {
    // Old: fan-out to sinks 0, 1 and 2, which none takes.
    let mut old = Relay::new(&[route(&[0], &[0, 1, 2], 100, WhenFull::Block)], 1, 3);
    old.ingest(0, b"data", |_, _| 0);
    // New: sink 0 still fed; sink 1 gone from the config; sink 2 still
    // there (as new sink 1) but in no route.
    let map = RelayMap {
        routes: &[None],
        sources: &[Some(0)],
        sinks: &[Some(0), None, Some(1)],
    };
    let routes = [route(&[0], &[0], 100, WhenFull::Block)];
    let (mut relay, mut leftovers) = Relay::carry(old, &routes, &map, (1, 2));
    leftovers.sort();
    assert_eq!(leftovers, [(1, b"data".to_vec()), (2, b"data".to_vec())]);
    assert_eq!(relay.held_total(), 4);
    assert_eq!(drain_by_lane(&mut relay, 0, 100), [(0, b"data".to_vec())]);
    check_identity(&relay);
}

#[test]
fn carry_puts_a_lane_mid_line_first() {
    // Old: two line routes into sink 0; route 1's line is half written
    // (its lane owns the sink) when route 0 holds a whole line.
    let mut old = Relay::new(
        &[
            lines(&[0], &[0], 100, WhenFull::Block, 100),
            lines(&[1], &[0], 100, WhenFull::Block, 100),
        ],
        2,
        1,
    );
    old.ingest(1, b"BBBB\n", |_, bytes| {
        assert_eq!(bytes, b"BBBB\n");
        2
    });
    old.ingest(0, b"aaa\n", |_, _| panic!("the sink is mid-line"));
    assert_eq!(old.pending_bytes(0), Some((1, &b"BB\n"[..])));
    // New: both sources on one line route (changed), with a second sink.
    let map = RelayMap {
        routes: &[None, None],
        sources: &[Some(0), Some(1)],
        sinks: &[Some(0)],
    };
    let routes = [lines(&[0, 1], &[0, 1], 100, WhenFull::Block, 100)];
    let (mut relay, leftovers) = Relay::carry(old, &routes, &map, (2, 2));
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The rest of the half-written line comes before anything else, and
    // the sink stays its lane's until that line is complete.
    assert_eq!(relay.pending_bytes(0), Some((0, &b"BB\naaa\n"[..])));
    relay.delivered(0, 1);
    relay.ingest(0, b"ccc\n", |sink, _| {
        assert_eq!(sink, 1, "sink 0 is mid-line");
        0
    });
    let mut out = b"BBB".to_vec();
    drain(&mut relay, 0, &mut out, 1);
    assert_eq!(out, b"BBBB\naaa\nccc\n");
    check_identity(&relay);
}

#[test]
fn carry_keeps_a_carried_lanes_pipe_and_its_id() {
    // Old: a byte route whose lane holds 3 bytes in its pipe, and another
    // route into the same sink that the new config drops.
    let kept = route(&[0], &[0], 100, WhenFull::DropNewest);
    let mut old = Relay::new(&[route(&[1], &[1], 100, WhenFull::Block), kept], 2, 2);
    old.spliced(0, [1], &[Took { sent: 2, piped: 3 }], 5);
    let stats = old.lanes()[1].stats();
    let map = RelayMap {
        routes: &[None, Some(0)],
        sources: &[Some(0), None],
        sinks: &[Some(0), None],
    };
    // New: the same route, now blocking with a bigger buffer, and a new one.
    let routes = [
        route(&[0], &[0], 4096, WhenFull::Block),
        route(&[2], &[2], 100, WhenFull::Block),
    ];
    let (relay, leftovers) = Relay::carry(old, &routes, &map, (3, 3));
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(
        relay.lanes_of_route(0),
        [1],
        "the carried lane keeps its id"
    );
    assert_eq!(
        relay.lanes_of_route(1),
        [0],
        "a new lane takes the id left free"
    );
    let lane = &relay.lanes()[1];
    assert_eq!(
        (lane.held(), lane.in_pipe()),
        (3, 3),
        "its pipe still holds them"
    );
    assert_eq!(lane.stats(), stats);
    assert_eq!((lane.capacity(), lane.policy()), (4096, WhenFull::Block));
    assert_eq!(relay.pending(0), Some((1, Out::Piped(3))));
    check_identity(&relay);
}

#[test]
fn lane_ids_are_reused_across_reloads() {
    let one = [route(&[0], &[0], 100, WhenFull::Block)];
    let many: Vec<RouteSpec> = (0..10)
        .map(|i| route(&[i], &[i], 100, WhenFull::Block))
        .collect();
    let mut relay = Relay::new(&many, 10, 10);
    for round in 0..100 {
        let (routes, map): (&[RouteSpec], Vec<Option<usize>>) = if round % 2 == 0 {
            (&one, (0..10).map(|r| (r == 0).then_some(0)).collect())
        } else {
            (&many, vec![Some(0)])
        };
        let identity: Vec<Option<usize>> = (0..10).map(Some).collect();
        let map = RelayMap {
            routes: &map,
            sources: &identity,
            sinks: &identity,
        };
        relay = Relay::carry(relay, routes, &map, (10, 10)).0;
        assert_eq!(relay.lanes_of_route(0), [0], "route 0 keeps its lane");
        assert!(
            relay.lanes().len() <= 10,
            "ids are reused: {}",
            relay.lanes().len()
        );
    }
}

#[test]
fn the_rest_of_a_line_merged_into_a_byte_lane_does_not_hold_the_sink() {
    // Old: a line route half-way through a line to sink 0, and a byte
    // route into the same sink.
    let old_routes = [
        lines(&[0], &[0], 100, WhenFull::Block, 100),
        route(&[1], &[0], 100, WhenFull::Block),
    ];
    let mut old = Relay::new(&old_routes, 2, 1);
    old.ingest(0, b"abc\ndef\n", |_, _| 0);
    old.delivered(0, 2);
    // New: the first route frames bytes now (a changed route).
    let routes = [
        route(&[0], &[0], 100, WhenFull::Block),
        route(&[1], &[0], 100, WhenFull::Block),
    ];
    let map = RelayMap {
        routes: &[None, Some(1)],
        sources: &[Some(0), Some(1)],
        sinks: &[Some(0)],
    };
    let (mut relay, leftovers) = Relay::carry(old, &routes, &map, (2, 1));
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let mut out = Vec::new();
    drain(&mut relay, 0, &mut out, 100);
    assert_eq!(out, b"c\ndef\n");
    relay.ingest(1, b"xyz", |_, _| 0);
    drain(&mut relay, 0, &mut out, 100);
    assert_eq!(out, b"c\ndef\nxyz", "the other route's bytes go out too");
    check_identity(&relay);
}

#[test]
fn bytes_given_back_to_a_new_lane_count_as_accepted_there() {
    // A retiring output brought back: its lanes are new, and they get
    // back what the old ones had not written yet.
    let mut relay = Relay::new(&[lines(&[0], &[0], 100, WhenFull::Block, 100)], 1, 1);
    relay.give_back(0, b"one\ntwo\n");
    check_identity(&relay);
    let lane = &relay.lanes()[0];
    assert_eq!((lane.stats().accepted, lane.held_lines()), (8, 2));
    let mut out = Vec::new();
    drain(&mut relay, 0, &mut out, 100);
    assert_eq!(out, b"one\ntwo\n");
    check_identity(&relay);
}
