//! The transport bench's entry point runs and prints its figures (`-- --nocapture`).

#[test]
fn trapped_read_vs_echo_floor() {
    let r = device::transport::bench::trapped_read_vs_echo(20_000).expect("bench");
    println!(
        "bench: trapped 4-byte BAR read min/median/max {}/{}/{} ns; echo floor {}/{}/{} ns; ratio {:.2}",
        r.trapped_read.min_ns,
        r.trapped_read.median_ns,
        r.trapped_read.max_ns,
        r.echo_floor.min_ns,
        r.echo_floor.median_ns,
        r.echo_floor.max_ns,
        r.ratio
    );
    assert!(r.trapped_read.median_ns > 0 && r.echo_floor.median_ns > 0);
    // Loose: the machine is shared; the 1.2x target is reported, not asserted.
    assert!(r.ratio < 4.0, "ratio {:.2}", r.ratio);
}
