//! The table `vanish run` prints at the end, for people: what ran, what each scenario found,
//! and the verdict.

use crate::report::Report;

/// The run as a short table (a header line, one row per scenario with its problems), then each
/// unique splat with its fingerprint, phase and call trace (report machinery dropped), then the
/// verdict.
pub fn table(report: &Report) -> String {
    // Only what is known: a run that stopped before provisioning names no kernel or QEMU.
    let mut head = vec![format!("vanish {}", report.vanish_version)];
    let arch = report.arch_name();
    head.push(match report.kernel.as_str() {
        "" => format!("{} ({arch})", report.model),
        k => format!("{} on {k} ({arch})", report.model),
    });
    if !report.qemu_version.is_empty() {
        head.push(format!("QEMU {}", report.qemu_version));
    }
    if !report.accel.is_empty() {
        head.push(report.accel.to_uppercase());
    }
    if report.runs > 1 {
        head.push(format!("{} runs", report.runs));
    }
    let mut out = head.join(" · ") + "\n";
    out += &format!(
        "{:<28} {:<7} {:<7} {:<6} {:<14} {:>6} {:>8}\n",
        "SCENARIO", "RESULT", "VERDICT", "DRIVER", "PCI", "SPLATS", "TIME"
    );
    for s in &report.scenarios {
        let result = match s.runs {
            Some(r) if r.of > 1 => format!("{} {}/{}", s.result.as_str(), r.failed, r.of),
            _ => s.result.as_str().to_string(),
        };
        out += &format!(
            "{:<28} {:<7} {:<7} {:<6} {:<14} {:>6} {:>7.1}s\n",
            s.name,
            result,
            s.verdict.as_str(),
            if s.driver_bound { "bound" } else { "-" },
            s.pci_address.as_deref().unwrap_or("-"),
            s.fingerprints.len(),
            s.duration_s
        );
        for p in &s.problems {
            out += &format!("    {p}\n");
        }
        if let Some(c) = &s.checker_off {
            out += &format!("    checker off: {c}\n");
        }
    }
    for s in &report.scenarios {
        for f in &s.fingerprints {
            let phases: Vec<&str> = f.phases.iter().map(|p| p.as_str()).collect();
            let seen = f
                .seen_in_runs
                .map(|k| format!(", seen in {k}/{} runs", report.runs))
                .unwrap_or_default();
            out += &format!(
                "\n[{}] {} x{} {} (phase {}, {}, during '{}'{seen})\n    {}\n    fingerprint: {}\n",
                s.name,
                f.kind.as_str(),
                f.count,
                f.status.as_str(),
                phases.join(","),
                f.subsystem.as_str(),
                f.step,
                f.headline,
                f.fingerprint
            );
            if !f.locks.is_empty() {
                out += &format!("    locks: {}\n", f.locks.join(" vs "));
            }
            for frame in f.frames.iter().take(12) {
                out += &format!("      {frame}\n");
            }
        }
    }
    if let Some(e) = &report.error {
        out += &format!("rig error: {e}\n");
    }
    out += &format!(
        "verdict: {} ({:.1}s)\n",
        report.judged().as_str(),
        report.duration_s
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::fixtures::*;

    #[test]
    fn table_has_a_header_a_row_per_scenario_the_splats_and_the_verdict() {
        let text = table(&sample());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "vanish 0.1.0 · hibmc on 6.12.57+deb13-arm64 (aarch64) · QEMU 11.1.3 · TCG"
        );
        assert!(lines[1].starts_with("SCENARIO "), "{text}");
        assert!(lines[2].starts_with("boot "), "{text}");
        assert!(
            lines[3].starts_with("unbind-rebind#2 ") && lines[3].contains(" bound "),
            "{text}"
        );
        assert!(
            text.contains(
                "\n[unbind-rebind#2] warning x1 new (phase removed, drm, during 'unbind')\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("\n      ttm_bo_put+0x1c4/0x2a0 [ttm]\n"),
            "{text}"
        );
        assert!(text.ends_with("verdict: error (95.2s)\n"), "{text}");
    }
}
