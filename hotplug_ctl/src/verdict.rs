//! Judging a run: which splats count, which failures are already known, and the exit code.
//!
//! Every scenario keeps its raw `verdict` (pass: no splat and every step held; fail; error: the
//! rig broke) and gets a `result` that a nightly job or a bisect can act on:
//!
//! | result | meaning | exit |
//! | --- | --- | --- |
//! | pass | nothing judged went wrong | 0 |
//! | known | it failed, but only in ways the baseline expects | 0 |
//! | flake | it failed in some of `--runs` only, or the baseline lists it as a flake | 1 / 0 |
//! | fixed | the baseline expects it to fail, and it passed (prune the baseline) | 0 (1 with `--fail-on-fixed`) |
//! | fail | a new failure | 1 |
//! | error | the rig could not judge | 125 |
//!
//! A flake found by `--runs` (failed k of N, 0 < k < N, not in the baseline's flakes) exits 1:
//! a bug that shows one time in three is still a bug, and a bisect must not call it good.
//!
//! Splats raised while the card is dead (between it dying and its removal) that only say the
//! hardware stopped answering (`vblank wait timed out`: nothing can deliver a vblank from a card
//! that is gone) are reported with status `dead-hardware` and judge nothing: that is what
//! losing the hardware looks like, not the bug a surprise removal hunts.
//!
//! Baselines come in drm-ci's format (`*-fails.txt` with `scenario,Fail` lines, `*-flakes.txt`
//! and `*-skips.txt` with one regex per line over scenario names) plus vanish's own
//! expectations file (`*.toml`), which pins known fingerprints to scenarios:
//!
//! ```toml
//! [[known]]
//! fingerprint = "warning:drivers/gpu/drm/drm_atomic_helper.c:drm_atomic_helper_wait_for_vblanks<drm_atomic_helper_commit_tail"
//! scenarios = ["unbind-rebind", "hotrebind"]   # optional: all scenarios
//! phases = ["re-added"]                          # optional: any phase
//! reason = "hibmc 5.12-6.13 never calls pci_set_master(); fixed in 6.14 (0ab6ea261c1f)"
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::fingerprint::{self, JudgePattern};
use crate::report::{
    CardPhase, FingerprintSummary, Report, RunsSummary, ScenarioReport, SplatStatus, Verdict,
};

pub use crate::report::ScenarioResult;

/// Fingerprints of splats that only say the card stopped answering.
const DEAD_HARDWARE: &[&str] = &[
    "warning:drivers/gpu/drm/drm_atomic_helper.c:drm_atomic_helper_wait_for_vblanks",
    // 7.x's fbdev damage worker waits for one vblank on the dead card.
    "warning:drivers/gpu/drm/drm_vblank.c:drm_crtc_wait_one_vblank",
];

/// Whether a splat is the expected noise of dead hardware.
pub fn is_dead_hardware_noise(fingerprint: &str, phase: CardPhase) -> bool {
    phase == CardPhase::Dead && DEAD_HARDWARE.iter().any(|p| fingerprint.starts_with(p))
}

/// One `[[known]]` entry of an expectations file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Known {
    /// A fingerprint, or a regex over fingerprints.
    pub fingerprint: String,
    /// Scenario names it is expected in; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scenarios: Vec<String>,
    /// Card phases it is expected in; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<CardPhase>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
struct ExpectationsFile {
    #[serde(default)]
    known: Vec<Known>,
}

/// What a run is judged against.
#[derive(Debug, Default)]
pub struct Baseline {
    /// Scenarios expected to fail (`*-fails.txt`), with the status word given.
    pub fails: BTreeMap<String, String>,
    pub flakes: Vec<Regex>,
    pub skips: Vec<Regex>,
    pub known: Vec<(Known, JudgePattern)>,
    /// The files read, for the report.
    pub files: Vec<PathBuf>,
}

impl Baseline {
    /// Reads a baseline file, or every baseline file in a directory. Errors are one line
    /// naming file and line.
    pub fn load(path: &Path) -> Result<Baseline, String> {
        Baseline::load_for(path, None)
    }

    /// As [`Baseline::load`]; in a directory with `stem` (`hibmc-aarch64`), only the files named
    /// for that card and architecture (`hibmc-aarch64-fails.txt`, `hibmc-aarch64.toml`, ...), as
    /// drm-ci names its files per driver.
    pub fn load_for(path: &Path, stem: Option<&str>) -> Result<Baseline, String> {
        let mut b = Baseline::default();
        if !path.exists() {
            return Err(format!("{}: does not exist", path.display()));
        }
        let files: Vec<PathBuf> = if path.is_dir() {
            let rd = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let all: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            let for_stem = |s: &str| {
                let mut v: Vec<PathBuf> = all
                    .iter()
                    .filter(|p| {
                        let name = p
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        name.starts_with(&format!("{s}-")) || name == format!("{s}.toml")
                    })
                    .cloned()
                    .collect();
                v.sort();
                v
            };
            let mut v = match stem {
                None => {
                    let mut v = all.clone();
                    v.sort();
                    v
                }
                // Baselines written before the architecture had one spelling are named with
                // Debian's (`hibmc-arm64-fails.txt`); they are read when no new-named file exists.
                Some(s) => {
                    let v = for_stem(s);
                    match legacy_stem(s) {
                        Some(old) if v.is_empty() => for_stem(&old),
                        _ => v,
                    }
                }
            };
            v.retain(|p| p.is_file());
            if v.is_empty() {
                return Err(format!(
                    "{}: no baseline files{} in this directory",
                    path.display(),
                    stem.map(|s| format!(" for {s}")).unwrap_or_default()
                ));
            }
            v
        } else {
            vec![path.to_path_buf()]
        };
        for file in files {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let kind = if name.ends_with("-fails.txt") || name == "fails.txt" {
                "fails"
            } else if name.ends_with("-flakes.txt") || name == "flakes.txt" {
                "flakes"
            } else if name.ends_with("-skips.txt") || name == "skips.txt" {
                "skips"
            } else if name.ends_with(".toml") {
                "toml"
            } else if path.is_dir() {
                continue;
            } else {
                return Err(format!(
                    "{}: not a baseline file (expected *-fails.txt, *-flakes.txt, *-skips.txt or *.toml)",
                    file.display()
                ));
            };
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let shown = file.display().to_string();
            match kind {
                "toml" => b.read_toml(&text, &shown)?,
                _ => b.read_lines(kind, &text, &shown)?,
            }
            b.files.push(file);
        }
        if b.files.is_empty() {
            return Err(format!(
                "{}: no baseline files in this directory",
                path.display()
            ));
        }
        Ok(b)
    }

    fn read_lines(&mut self, kind: &str, text: &str, file: &str) -> Result<(), String> {
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("{file}:{}", i + 1);
            if kind == "fails" {
                let Some((name, status)) = line.split_once(',') else {
                    return Err(format!("{at}: expected 'scenario,Fail', got '{line}'"));
                };
                let (name, status) = (name.trim(), status.trim());
                if name.is_empty() || status.is_empty() || status.contains(',') {
                    return Err(format!("{at}: expected 'scenario,Fail', got '{line}'"));
                }
                self.fails.insert(name.to_string(), status.to_string());
            } else {
                let re = Regex::new(&format!("^(?:{line})$")).map_err(|e| {
                    format!(
                        "{at}: bad regex '{line}': {}",
                        e.to_string().lines().last().unwrap_or("")
                    )
                })?;
                if kind == "flakes" {
                    self.flakes.push(re);
                } else {
                    self.skips.push(re);
                }
            }
        }
        Ok(())
    }

    fn read_toml(&mut self, text: &str, file: &str) -> Result<(), String> {
        let parsed: ExpectationsFile = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(1);
            format!("{file}:{line}: {}", e.message())
        })?;
        for k in parsed.known {
            let pattern: JudgePattern =
                k.fingerprint.parse().map_err(|e| format!("{file}: {e}"))?;
            self.known.push((k, pattern));
        }
        Ok(())
    }

    pub fn skips(&self, scenario: &str) -> bool {
        self.skips.iter().any(|r| r.is_match(base_name(scenario)))
    }

    fn is_flake(&self, scenario: &str) -> bool {
        self.flakes.iter().any(|r| r.is_match(base_name(scenario)))
    }

    fn expected_to_fail(&self, scenario: &str) -> bool {
        self.fails.contains_key(base_name(scenario))
    }

    /// Entries pinned to this scenario by name.
    fn pinned(&self, scenario: &str) -> bool {
        self.known
            .iter()
            .any(|(k, _)| k.scenarios.iter().any(|s| s == base_name(scenario)))
    }

    /// Whether a fingerprint is known in this scenario and phase.
    fn knows(&self, scenario: &str, fingerprint: &str, phase: CardPhase) -> bool {
        self.known.iter().any(|(k, p)| {
            fingerprint::matches(p, fingerprint)
                && (k.scenarios.is_empty() || k.scenarios.iter().any(|s| s == base_name(scenario)))
                && (k.phases.is_empty() || k.phases.contains(&phase))
        })
    }
}

/// `unbind#3` (a `--repeat` cycle) is judged as `unbind`.
/// `MODEL-aarch64` -> `MODEL-arm64`, `MODEL-x86_64` -> `MODEL-amd64`: the stem of a baseline
/// written when files were named with Debian's architecture.
fn legacy_stem(stem: &str) -> Option<String> {
    if let Some(model) = stem.strip_suffix("-aarch64") {
        Some(format!("{model}-arm64"))
    } else {
        stem.strip_suffix("-x86_64").map(|m| format!("{m}-amd64"))
    }
}

fn base_name(scenario: &str) -> &str {
    scenario.split('#').next().unwrap_or(scenario)
}

/// How to judge.
#[derive(Debug, Default)]
pub struct Policy {
    pub baseline: Option<Baseline>,
    /// `--judge-by`: only matching splats make a scenario bad.
    pub judge_by: Vec<JudgePattern>,
    /// `--fail-on-fixed`: a scenario the baseline expects to fail that passed exits 1.
    pub fail_on_fixed: bool,
}

/// Judges every scenario of `report` (setting each splat's status and each scenario's
/// `result`), and returns the lines to tell the user (e.g. a `--judge-by` that matched nothing).
pub fn judge(report: &mut Report, policy: &Policy) -> Vec<String> {
    let mut matched_judge = vec![false; policy.judge_by.len()];
    let mut notes = Vec::new();
    for s in &mut report.scenarios {
        judge_scenario(s, policy, &mut matched_judge, &mut notes);
    }
    for (p, hit) in policy.judge_by.iter().zip(matched_judge) {
        if !hit {
            notes.push(format!(
                "--judge-by '{}' matched no splat in this run (judged by it anyway)",
                p.text
            ));
        }
    }
    notes
}

/// Judged by one signature, a scenario that stopped at a step that did not hold without showing
/// that signature never got to where the bug shows: it cannot say "good". (A `client kms` that
/// did not start under load once made `--judge-by` a false pass on 7.2's DDC Oops.)
fn cut_short(s: &ScenarioReport, policy: &Policy) -> bool {
    !policy.judge_by.is_empty()
        && !s.problems.is_empty()
        && !s.splats.iter().any(|f| f.status == SplatStatus::New)
}

fn judge_scenario(
    s: &mut ScenarioReport,
    policy: &Policy,
    matched_judge: &mut [bool],
    notes: &mut Vec<String>,
) {
    let baseline = policy.baseline.as_ref();
    let name = s.name.clone();
    let mut new_splats = 0;
    let mut known_splats = 0;
    for f in &mut s.splats {
        let status = if is_dead_hardware_noise(&f.fingerprint, f.phase) {
            SplatStatus::DeadHardware
        } else if !policy.judge_by.is_empty() {
            let mut hit = false;
            for (i, p) in policy.judge_by.iter().enumerate() {
                if fingerprint::matches(p, &f.fingerprint) {
                    matched_judge[i] = true;
                    hit = true;
                }
            }
            if hit {
                SplatStatus::New
            } else {
                SplatStatus::NotJudged
            }
        } else {
            SplatStatus::New
        };
        let status = match (status, baseline) {
            (SplatStatus::New, Some(b)) if b.knows(&name, &f.fingerprint, f.phase) => {
                SplatStatus::Known
            }
            (SplatStatus::New, Some(b)) if b.expected_to_fail(&name) && !b.pinned(&name) => {
                SplatStatus::Known
            }
            (st, _) => st,
        };
        match status {
            SplatStatus::New => new_splats += 1,
            SplatStatus::Known => known_splats += 1,
            _ => {}
        }
        f.status = status;
    }
    s.fingerprints = summarize(s);
    // Steps that did not hold count unless the run is judged by one signature only.
    let problems = if policy.judge_by.is_empty() {
        s.problems.len()
    } else {
        0
    };
    let expected = baseline.is_some_and(|b| b.expected_to_fail(&name));
    let listed_flake = baseline.is_some_and(|b| b.is_flake(&name));
    let partly = s
        .runs
        .as_ref()
        .is_some_and(|r| r.failed > 0 && r.failed < r.of);
    let failing = new_splats > 0 || (problems > 0 && !expected);
    let not_judged = cut_short(s, policy);
    if not_judged {
        notes.push(format!(
            "{}: not judged: a step did not hold before the judged splat could show ({}); a bisect skips this commit",
            s.name,
            s.problems.first().map(String::as_str).unwrap_or("?")
        ));
    }
    s.result = if s.verdict == Verdict::Error || not_judged {
        ScenarioResult::Error
    } else if failing && (listed_flake || partly) {
        ScenarioResult::Flake
    } else if failing {
        ScenarioResult::Fail
    } else if known_splats > 0 || (problems > 0 && expected) {
        ScenarioResult::Known
    } else if expected {
        ScenarioResult::Fixed
    } else {
        ScenarioResult::Pass
    };
    s.flake_listed = listed_flake;
}

/// The unique fingerprints of a scenario, folded: count, phases, first and last log line.
pub fn summarize(s: &ScenarioReport) -> Vec<FingerprintSummary> {
    let mut out: Vec<FingerprintSummary> = Vec::new();
    for f in &s.splats {
        if let Some(e) = out.iter_mut().find(|e| e.fingerprint == f.fingerprint) {
            e.count += 1;
            e.last_log_line = f.splat.line;
            if !e.phases.contains(&f.phase) {
                e.phases.push(f.phase);
            }
            if f.status.rank() > e.status.rank() {
                e.status = f.status;
            }
            continue;
        }
        out.push(FingerprintSummary {
            fingerprint: f.fingerprint.clone(),
            kind: f.splat.kind,
            subsystem: f.subsystem,
            phases: vec![f.phase],
            step: f.step.clone(),
            count: 1,
            first_log_line: f.splat.line,
            last_log_line: f.splat.line,
            time: f.splat.time,
            status: f.status,
            headline: f.splat.first_line.clone(),
            locks: f.splat.locks.clone(),
            frames: fingerprint::display_frames(&f.splat.call_trace),
            seen_in_runs: None,
        });
    }
    out
}

/// Folds the judged reports of `--runs N` into one: per scenario, how many runs failed
/// ("failed k/N"), each fingerprint's "seen in k/N runs", and the splats of the first failing
/// run. A scenario that failed in some runs only is a flake. One report is returned as it is.
pub fn merge_runs(mut reports: Vec<Report>) -> Report {
    if reports.len() <= 1 {
        return reports.pop().unwrap_or_else(empty_report);
    }
    let n = reports.len() as u32;
    let mut base = reports[0].clone();
    base.duration_s = reports.iter().map(|r| r.duration_s).sum();
    if base.error.is_none() {
        base.error = reports.iter().find_map(|r| r.error.clone());
    }
    for s in &mut base.scenarios {
        let same: Vec<&ScenarioReport> = reports
            .iter()
            .filter_map(|r| r.scenarios.iter().find(|x| x.name == s.name))
            .collect();
        let failing = |x: &&&ScenarioReport| x.result == ScenarioResult::Fail;
        let failed = same.iter().filter(failing).count() as u32;
        let errored =
            same.iter().any(|x| x.result == ScenarioResult::Error) || same.len() < n as usize;
        if let Some(first_bad) = same.iter().find(failing) {
            let runs = s.runs;
            *s = (*first_bad).clone();
            s.runs = runs;
        }
        s.runs = Some(RunsSummary { failed, of: n });
        s.result = if errored && failed == 0 {
            ScenarioResult::Error
        } else if failed == n {
            ScenarioResult::Fail
        } else if failed > 0 {
            ScenarioResult::Flake
        } else {
            s.result
        };
        for f in &mut s.fingerprints {
            let seen = same
                .iter()
                .filter(|x| {
                    x.fingerprints
                        .iter()
                        .any(|g| g.fingerprint == f.fingerprint)
                })
                .count() as u32;
            f.seen_in_runs = Some(seen);
        }
    }
    base.runs = n;
    base
}

fn empty_report() -> Report {
    let mut r = Report::new("", "", PathBuf::new());
    r.error = Some("no run".into());
    r
}

/// Exit code of a judged report: 125 if the rig broke anywhere, else 1 for a new failure (or a
/// flake `--runs` found, or with `--fail-on-fixed` a fixed one), else 0.
pub fn exit_code(report: &Report, policy: &Policy) -> i32 {
    if report.error.is_some() || report.scenarios.is_empty() {
        return crate::exit::SKIP;
    }
    // Judged by a signature that showed (a new matching splat): the commit is bad, whatever
    // else could not be judged.
    let judged_bug_seen = !policy.judge_by.is_empty()
        && report
            .scenarios
            .iter()
            .any(|s| s.splats.iter().any(|f| f.status == SplatStatus::New));
    if judged_bug_seen {
        return crate::exit::FAIL;
    }
    let results: BTreeSet<ScenarioResult> = report.scenarios.iter().map(|s| s.result).collect();
    let bad_flake = report
        .scenarios
        .iter()
        .any(|s| s.result == ScenarioResult::Flake && !s.flake_listed);
    if results.contains(&ScenarioResult::Error) {
        crate::exit::SKIP
    } else if results.contains(&ScenarioResult::Fail)
        || bad_flake
        || (policy.fail_on_fixed && results.contains(&ScenarioResult::Fixed))
    {
        crate::exit::FAIL
    } else {
        crate::exit::PASS
    }
}

impl PartialOrd for ScenarioResult {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ScenarioResult {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

/// A baseline written from a judged run: a drm-ci `fails.txt` for scenarios whose steps did not
/// hold, and an expectations file pinning every fingerprint that made a scenario fail to the
/// scenarios it was seen in. Returns (fails.txt, expectations.toml).
pub fn baseline_from(report: &Report) -> (String, String) {
    let mut fails = format!(
        "# vanish baseline: {} on {} ({}), written by `vanish baseline`\n",
        report.model,
        report.kernel,
        report.arch_name()
    );
    let mut known: BTreeMap<String, Known> = BTreeMap::new();
    for s in &report.scenarios {
        let name = base_name(&s.name).to_string();
        if !s.problems.is_empty() && s.verdict == Verdict::Fail {
            fails += &format!("{name},Fail\n");
        }
        for f in &s.splats {
            if matches!(f.status, SplatStatus::DeadHardware | SplatStatus::NotJudged) {
                continue;
            }
            let k = known.entry(f.fingerprint.clone()).or_insert_with(|| Known {
                fingerprint: f.fingerprint.clone(),
                scenarios: Vec::new(),
                phases: Vec::new(),
                reason: format!(
                    "seen on {} ({})",
                    report.kernel,
                    f.splat.first_line.chars().take(100).collect::<String>()
                ),
            });
            // Pinned to scenarios, not to phases: which phase a timing-dependent splat lands
            // in can differ from run to run; add `phases` by hand to be stricter.
            if !k.scenarios.contains(&name) {
                k.scenarios.push(name.clone());
            }
        }
    }
    let file = ExpectationsFile {
        known: known.into_values().collect(),
    };
    let toml = format!(
        "# vanish expectations: {} on {} ({})\n{}",
        report.model,
        report.kernel,
        report.arch_name(),
        toml::to_string(&file).unwrap_or_default()
    );
    (fails, toml)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A judged run's scenario that stopped early without the judged splat is an error (exit
    /// 125, a bisect skip), never a pass; one that ran to its end without it passes; one that
    /// showed it fails, steps or not.
    #[test]
    fn judge_by_never_passes_a_scenario_that_stopped_early() {
        let policy = Policy {
            judge_by: vec!["oops:hibmc_ddc_setsda<bit_xfer<__i2c_transfer"
                .parse()
                .expect("pattern")],
            ..Policy::default()
        };
        let mut report = Report::new("hibmc", "aarch64", PathBuf::new());
        let mut stopped = ScenarioReport::new("surprise-with-mmap", Verdict::Fail);
        stopped.problems = vec!["client kms: did not start".into()];
        report.scenarios.push(stopped);
        report
            .scenarios
            .push(ScenarioReport::new("unbind-rebind", Verdict::Pass));
        let notes = judge(&mut report, &policy);
        assert_eq!(report.scenarios[0].result, ScenarioResult::Error);
        assert_eq!(report.scenarios[1].result, ScenarioResult::Pass);
        assert_eq!(exit_code(&report, &policy), crate::exit::SKIP);
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("surprise-with-mmap: not judged")),
            "{notes:?}"
        );
        // Without --judge-by the same stopped scenario is the kernel's failure.
        let mut plain = Report::new("hibmc", "aarch64", PathBuf::new());
        let mut stopped = ScenarioReport::new("surprise-with-mmap", Verdict::Fail);
        stopped.problems = vec!["client kms: did not start".into()];
        plain.scenarios.push(stopped);
        judge(&mut plain, &Policy::default());
        assert_eq!(plain.scenarios[0].result, ScenarioResult::Fail);
    }

    /// The judged bug showing in one scenario makes the run bad (exit 1) even when another
    /// scenario was cut short and could not be judged.
    #[test]
    fn a_judged_bug_that_showed_is_bad_whatever_else_was_cut_short() {
        let log = include_str!("../tests/fixtures/splats/ddc_oops_7.2.txt");
        use crate::report::FoundSplat;
        let splats: Vec<FoundSplat> = crate::splat::find_splats(log)
            .into_iter()
            .map(|s| FoundSplat {
                fingerprint: fingerprint::fingerprint(&s),
                subsystem: fingerprint::Subsystem::Driver,
                splat: s,
                step: "unplug surprise".into(),
                phase: CardPhase::Removed,
                count: 1,
                status: SplatStatus::New,
            })
            .collect();
        let oops = splats
            .iter()
            .find(|f| f.fingerprint.starts_with("oops:"))
            .map(|f| f.fingerprint.clone())
            .expect("the fixture has an Oops");
        let policy = Policy {
            judge_by: vec![oops.parse().expect("pattern")],
            ..Policy::default()
        };
        let mut report = Report::new("hibmc", "aarch64", PathBuf::new());
        let mut stopped = ScenarioReport::new("hotreplug", Verdict::Fail);
        stopped.problems = vec!["client kms: did not start".into()];
        report.scenarios.push(stopped);
        let mut seen = ScenarioReport::new("surprise-with-mmap", Verdict::Fail);
        seen.splats = splats;
        report.scenarios.push(seen);
        judge(&mut report, &policy);
        assert_eq!(report.scenarios[0].result, ScenarioResult::Error);
        assert_eq!(report.scenarios[1].result, ScenarioResult::Fail);
        assert_eq!(exit_code(&report, &policy), crate::exit::FAIL);
    }

    #[test]
    fn every_shipped_baseline_parses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/baselines");
        let mut n = 0;
        for dir in std::fs::read_dir(&root).unwrap().flatten() {
            for stem in ["hibmc-aarch64", "bochs-aarch64", "bochs-x86_64"] {
                let has = std::fs::read_dir(dir.path())
                    .unwrap()
                    .flatten()
                    .any(|f| f.file_name().to_string_lossy().starts_with(stem));
                if has {
                    Baseline::load_for(&dir.path(), Some(stem)).unwrap_or_else(|e| panic!("{e}"));
                    n += 1;
                }
            }
        }
        assert!(n >= 5, "{n} baselines");
    }

    #[test]
    fn baselines_named_with_debians_architecture_still_load() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "hibmc-arm64-fails.txt", "unbind-rebind,Fail\n");
        let b = Baseline::load_for(dir.path(), Some("hibmc-aarch64")).unwrap();
        assert!(b.expected_to_fail("unbind-rebind"));
        // A new-named file wins over an old one for the same card.
        write(dir.path(), "hibmc-aarch64-fails.txt", "hotreplug,Fail\n");
        let b = Baseline::load_for(dir.path(), Some("hibmc-aarch64")).unwrap();
        assert!(b.expected_to_fail("hotreplug") && !b.expected_to_fail("unbind-rebind"));
        assert!(Baseline::load_for(dir.path(), Some("bochs-x86_64")).is_err());
    }

    #[test]
    fn baselines_parse_and_bad_ones_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "hibmc-fails.txt",
            "# known\nunbind-rebind,Fail\n\nhotreplug,Crash\n",
        );
        write(dir.path(), "hibmc-flakes.txt", "surprise-.*\n");
        write(dir.path(), "hibmc-skips.txt", "server-crash\n");
        write(
            dir.path(),
            "hibmc.toml",
            "[[known]]\nfingerprint = \"oops:hibmc_ddc_setsda<.*\"\nscenarios = [\"surprise-with-mmap\"]\nphases = [\"removed\"]\n",
        );
        let b = Baseline::load(dir.path()).unwrap();
        assert_eq!(b.fails.len(), 2);
        assert!(b.expected_to_fail("unbind-rebind") && b.expected_to_fail("hotreplug#2"));
        assert!(b.is_flake("surprise-with-mmap") && !b.is_flake("hotreplug"));
        assert!(b.skips("server-crash") && !b.skips("server-crash-2"));
        assert!(b.knows(
            "surprise-with-mmap",
            "oops:hibmc_ddc_setsda<bit_xfer<x",
            CardPhase::Removed
        ));
        assert!(!b.knows(
            "surprise-with-mmap",
            "oops:hibmc_ddc_setsda<bit_xfer<x",
            CardPhase::Present
        ));
        assert!(!b.knows(
            "hotreplug",
            "oops:hibmc_ddc_setsda<bit_xfer<x",
            CardPhase::Removed
        ));

        let bad = tempfile::tempdir().unwrap();
        let f = write(bad.path(), "x-fails.txt", "ok,Fail\nno comma here\n");
        let e = Baseline::load(&f).unwrap_err();
        assert!(
            e.ends_with("x-fails.txt:2: expected 'scenario,Fail', got 'no comma here'"),
            "{e}"
        );
        let f = write(bad.path(), "x-flakes.txt", "\n(unclosed\n");
        let e = Baseline::load(&f).unwrap_err();
        assert!(e.contains("x-flakes.txt:2: bad regex '(unclosed'"), "{e}");
        let f = write(
            bad.path(),
            "x.toml",
            "[[known]]\nfingerprint = \"a\"\nscenario = \"typo\"\n",
        );
        let e = Baseline::load(&f).unwrap_err();
        assert!(e.contains("x.toml:3:"), "{e}");
        let f = write(bad.path(), "notes.md", "hi");
        assert!(Baseline::load(&f)
            .unwrap_err()
            .contains("not a baseline file"));
    }
}
