//! The transport bench's entry point runs and prints its figures (`-- --nocapture`).

#[test]
fn trapped_read_vs_echo_floor() {
    let r = device::transport::bench::trapped_read_vs_echo(20_000).expect("bench");
    println!(
        "bench: trapped 4-byte BAR read min/median/max {}/{}/{} ns; echo floor {}/{}/{} ns; \
         median ratio {:.2}, min ratio {:.2}",
        r.trapped_read.min_ns,
        r.trapped_read.median_ns,
        r.trapped_read.max_ns,
        r.echo_floor.min_ns,
        r.echo_floor.median_ns,
        r.echo_floor.max_ns,
        r.ratio,
        r.ratio_min
    );
    assert!(r.trapped_read.median_ns > 0 && r.echo_floor.median_ns > 0);
    // The machine is shared: the 1.2x median target is reported, not asserted; the minimums
    // are stable under load and catch a server that got grossly slower.
    assert!(r.ratio_min < 2.5, "min ratio {:.2}", r.ratio_min);
}
