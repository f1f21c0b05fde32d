use super::*;

#[test]
fn fan_out_delivers_every_byte_to_every_sink_in_order() {
    let mut relay = Relay::new(&[route(&[0], &[0, 1], 1024, WhenFull::Block)], 1, 2);
    let mut outs = [Vec::new(), Vec::new()];
    let data: Vec<u8> = (0..=255).cycle().take(5000).collect();
    for piece in data.chunks(300) {
        let budget = relay.read_budget(0, 4096);
        assert!(budget >= piece.len());
        // Sink 0 takes 100 bytes directly, sink 1 nothing.
        relay.ingest(0, piece, |sink, bytes| {
            if sink == 0 {
                outs[0].extend_from_slice(&bytes[..100]);
                100
            } else {
                0
            }
        });
        check_identity(&relay);
        drain(&mut relay, 0, &mut outs[0], 7);
        drain(&mut relay, 1, &mut outs[1], 1000);
    }
    assert_eq!(outs[0], data);
    assert_eq!(outs[1], data);
    check_identity(&relay);
}

#[test]
fn block_budget_is_the_least_free_space_of_blocking_lanes() {
    let routes = [
        route(&[0], &[0], 100, WhenFull::Block),
        route(&[0], &[1], 50, WhenFull::Block),
        route(&[0], &[2], 10, WhenFull::DropNewest),
    ];
    let mut relay = Relay::new(&routes, 1, 3);
    assert_eq!(relay.read_budget(0, 4096), 50);
    relay.ingest(0, &[1; 30], |_, _| 0);
    assert_eq!(relay.read_budget(0, 4096), 20);
    relay.ingest(0, &[2; 20], |_, _| 0);
    assert_eq!(relay.read_budget(0, 4096), 0);
    let mut out = Vec::new();
    drain(&mut relay, 1, &mut out, 5);
    assert_eq!(relay.read_budget(0, 4096), 50);
    assert_eq!(relay.lanes()[2].stats().dropped, 40);
    check_identity(&relay);
}

#[test]
fn drop_newest_keeps_the_oldest_bytes() {
    let mut relay = Relay::new(&[route(&[0], &[0], 10, WhenFull::DropNewest)], 1, 1);
    relay.ingest(0, b"0123456", |_, _| 0);
    relay.ingest(0, b"789abcdef", |_, _| 0);
    let mut out = Vec::new();
    drain(&mut relay, 0, &mut out, 3);
    assert_eq!(out, b"0123456789");
    assert_eq!(relay.lanes()[0].stats().dropped, 6);
    check_identity(&relay);
}

#[test]
fn drop_oldest_keeps_the_newest_bytes() {
    let mut relay = Relay::new(&[route(&[0], &[0], 10, WhenFull::DropOldest)], 1, 1);
    relay.ingest(0, b"0123456", |_, _| 0);
    relay.ingest(0, b"789abcdef", |_, _| 0);
    let mut out = Vec::new();
    drain(&mut relay, 0, &mut out, 4);
    assert_eq!(out, b"6789abcdef");
    assert_eq!(relay.lanes()[0].stats().dropped, 6);
    relay.ingest(0, b"the quick brown fox", |_, _| 0);
    out.clear();
    drain(&mut relay, 0, &mut out, 4);
    assert_eq!(out, b" brown fox");
    check_identity(&relay);
}

#[test]
fn fan_in_alternates_between_routes_of_one_sink() {
    let routes = [
        route(&[0], &[0], 100, WhenFull::Block),
        route(&[1], &[0], 100, WhenFull::Block),
    ];
    let mut relay = Relay::new(&routes, 2, 1);
    relay.ingest(0, b"aaaa", |_, _| 0);
    relay.ingest(1, b"bbbb", |_, _| 0);
    let mut out = Vec::new();
    drain(&mut relay, 0, &mut out, 2);
    assert_eq!(out, b"aabbaabb");
    assert_eq!(relay.sources_feeding(0).collect::<Vec<_>>(), [0, 1]);
}

#[test]
fn a_busy_sink_is_not_written_directly_out_of_order() {
    let mut relay = Relay::new(&[route(&[0], &[0], 100, WhenFull::Block)], 1, 1);
    relay.ingest(0, b"first", |_, _| 0);
    relay.ingest(0, b"second", |_, _| panic!("the sink still holds bytes"));
    let mut out = Vec::new();
    drain(&mut relay, 0, &mut out, 100);
    assert_eq!(out, b"firstsecond");
}

#[test]
fn discard_counts_held_bytes_as_dropped() {
    let mut relay = Relay::new(&[route(&[0], &[0], 100, WhenFull::Block)], 1, 1);
    relay.ingest(0, b"lost", |_, _| 0);
    assert_eq!(relay.discard(0), 4);
    assert_eq!(relay.held_total(), 0);
    check_identity(&relay);
}
