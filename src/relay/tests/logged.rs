use super::*;

#[test]
fn a_source_is_logged_only_while_its_routes_frame_lines_and_hold_nothing_in_memory() {
    let mut relay = Relay::new(
        &[
            lines(&[0, 1], &[0], 100, WhenFull::Block, 10),
            route(&[1], &[1], 100, WhenFull::Block),
        ],
        2,
        2,
    );
    assert_eq!(relay.log_max_line(0), Some(10));
    assert_eq!(relay.log_max_line(1), None, "it feeds a byte route too");
    // A line in progress in memory: the next byte does not start a line.
    relay.ingest(0, b"half", |_, _| 0);
    assert_eq!(relay.log_max_line(0), None);
    relay.ingest(0, b" done\n", |_, _| 0);
    assert_eq!(relay.log_max_line(0), None, "the lane holds it in memory");
    let (lane, out) = relay.pending(0).expect("a line to write");
    let n = match out {
        Out::Bytes(bytes) => bytes.len(),
        Out::Piped(n) => n,
    };
    relay.delivered(lane, n);
    assert_eq!(relay.log_max_line(0), Some(10));

    let drop_oldest = Relay::new(&[lines(&[0], &[0], 100, WhenFull::DropOldest, 10)], 1, 1);
    assert_eq!(drop_oldest.log_max_line(0), None);
}

#[test]
fn delivering_piped_runs_delivers_their_lines() {
    let mut relay = Relay::new(&[lines(&[0], &[0], 100, WhenFull::Block, 50)], 1, 1);
    relay.piped_run(0, b"a\nb\n");
    relay.piped_run(0, b"ccc\n");
    assert_eq!(relay.pending(0).map(|(_, out)| out), Some(Out::Piped(8)));
    // Lines count when their whole run is delivered.
    relay.delivered(0, 3);
    assert_eq!(relay.lanes()[0].stats().lines_delivered, 0);
    relay.delivered(0, 1);
    assert_eq!(relay.lanes()[0].stats().lines_delivered, 2);
    relay.delivered(0, 4);
    let stats = relay.lanes()[0].stats();
    assert_eq!((stats.lines_accepted, stats.lines_delivered), (3, 3));
    assert_eq!(relay.lanes()[0].held_lines(), 0);
}

#[test]
fn a_dropped_run_counts_its_bytes_and_lines() {
    let mut relay = Relay::new(&[lines(&[0], &[0], 100, WhenFull::DropNewest, 50)], 1, 1);
    relay.dropped_run(0, b"x\ny\n");
    let stats = relay.lanes()[0].stats();
    assert_eq!((stats.accepted, stats.dropped), (4, 4));
    assert_eq!((stats.lines_accepted, stats.lines_dropped), (2, 2));
    assert_eq!(relay.pending(0).map(|(_, out)| out), None);
}
