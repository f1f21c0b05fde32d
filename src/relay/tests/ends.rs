use super::*;

fn forwarding(sources: &[usize], sinks: &[usize]) -> RouteSpec {
    RouteSpec {
        forward_eof: true,
        ..route(sources, sinks, 100, WhenFull::Block)
    }
}

#[test]
fn an_end_comes_after_every_source_ended_and_before_the_next_session() {
    let mut relay = Relay::new(&[forwarding(&[0, 1], &[0])], 2, 1);
    relay.ingest(0, b"a1", |_, _| 0);
    relay.ingest(1, b"b1", |_, _| 0);
    assert!(!relay.source_ended(0));
    relay.ingest(0, b"a2", |_, _| 0); // source 0 starts again: not ended
    assert!(!relay.source_ended(1));
    assert!(relay.source_ended(0));
    relay.ingest(0, b"next", |_, _| panic!("an end is pending"));
    let mut out = Vec::new();
    drain(&mut relay, 0, &mut out, 100);
    assert_eq!(out, b"a1b1a2");
    assert!(relay.end_due(0));
    relay.end_delivered(0);
    assert!(!relay.end_due(0));
    drain(&mut relay, 0, &mut out, 100);
    assert_eq!(out, b"a1b1a2next");
    assert!(!relay.end_pending(0));
}

#[test]
fn ends_are_not_forwarded_on_hold_routes_or_to_mixed_sinks() {
    let routes = [
        forwarding(&[0], &[0]),
        route(&[1], &[0], 100, WhenFull::Block),
    ];
    let mut relay = Relay::new(&routes, 2, 1);
    assert!(!relay.source_ended(1));
    assert!(relay.source_ended(0));
    assert!(!relay.end_due(0), "the hold route never ends its lane");
}

#[test]
fn drop_oldest_keeps_an_end_after_the_bytes_it_followed() {
    let spec = RouteSpec {
        buffer: 4,
        when_full: WhenFull::DropOldest,
        ..forwarding(&[0], &[0])
    };
    let mut relay = Relay::new(&[spec], 1, 1);
    relay.ingest(0, b"ab", |_, _| 0);
    relay.source_ended(0);
    relay.ingest(0, b"cdefgh", |_, _| 0);
    assert!(relay.end_due(0), "the old session's bytes were all dropped");
    relay.end_delivered(0);
    let mut out = Vec::new();
    drain(&mut relay, 0, &mut out, 100);
    assert_eq!(out, b"efgh");
    check_identity(&relay);
}

#[test]
fn ends_of_sessions_nobody_reads_stay_bounded() {
    // An output nobody reads, on a drop-oldest route that forwards ends:
    // every session's bytes push the last ones out, and its end with them.
    let spec = RouteSpec {
        buffer: 4,
        when_full: WhenFull::DropOldest,
        ..forwarding(&[0], &[0])
    };
    let mut relay = Relay::new(&[spec], 1, 1);
    for _ in 0..100_000 {
        relay.ingest(0, b"abc", |_, _| 0);
        relay.source_ended(0);
    }
    let lane = &relay.lanes()[0];
    assert!(
        lane.ends.len() <= lane.capacity() + 1,
        "{} end markers for a lane of {} bytes",
        lane.ends.len(),
        lane.capacity()
    );
    check_identity(&relay);
    // What is left: the newest bytes, each session's end after its own.
    assert!(relay.end_due(0), "the dropped sessions' end is due");
    relay.end_delivered(0);
    let mut out = Vec::new();
    drain(&mut relay, 0, &mut out, 100);
    assert!(out.ends_with(b"c"), "{out:?}");
}
