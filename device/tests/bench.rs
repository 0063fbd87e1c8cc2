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
    // Speed is `vanish bench`'s to report, never a test's to assert: this checks that the
    // bench measured both paths.
    assert!(r.trapped_read.median_ns > 0 && r.echo_floor.median_ns > 0);
    assert!(r.iterations == 20_000);
}
