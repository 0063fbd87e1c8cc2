//! What a run found: `report.json` (the table printed at the end is `output::table`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::fingerprint::Subsystem;
use crate::splat::{Splat, SplatKind};

/// The card's state when a splat was raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CardPhase {
    /// Boot and the driver's first probe.
    Boot,
    /// The card is there and answering.
    #[default]
    Present,
    /// The card died (all-ones, no interrupts) and has not left the slot yet.
    Dead,
    /// The card (or its driver) is gone.
    Removed,
    /// A card came back (bind, rescan, hot-add).
    ReAdded,
    /// A client closes the device it held across a removal.
    LateClose,
}

impl CardPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            CardPhase::Boot => "boot",
            CardPhase::Present => "present",
            CardPhase::Dead => "dead",
            CardPhase::Removed => "removed",
            CardPhase::ReAdded => "re-added",
            CardPhase::LateClose => "late-close",
        }
    }
}

/// How a splat was judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SplatStatus {
    /// It makes the scenario fail.
    #[default]
    New,
    /// The baseline expects it.
    Known,
    /// What dead hardware looks like (see `verdict`); reported, not judged.
    DeadHardware,
    /// `--judge-by` was given and this is another signature.
    NotJudged,
}

impl SplatStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SplatStatus::New => "new",
            SplatStatus::Known => "known",
            SplatStatus::DeadHardware => "dead-hardware",
            SplatStatus::NotJudged => "not-judged",
        }
    }

    /// Which status a folded entry shows when its occurrences differ: the one that matters most.
    pub fn rank(self) -> u8 {
        match self {
            SplatStatus::New => 3,
            SplatStatus::Known => 2,
            SplatStatus::DeadHardware => 1,
            SplatStatus::NotJudged => 0,
        }
    }
}

/// One unique fingerprint of a scenario, its occurrences folded.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FingerprintSummary {
    pub fingerprint: String,
    pub kind: SplatKind,
    pub subsystem: Subsystem,
    pub phases: Vec<CardPhase>,
    /// The step during which it first appeared.
    pub step: String,
    pub count: usize,
    /// Console line numbers (1-based, in console.log) of the first and last occurrence.
    pub first_log_line: usize,
    pub last_log_line: usize,
    /// printk time of the first occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<f64>,
    pub status: SplatStatus,
    pub headline: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<String>,
    /// The call trace without report machinery.
    pub frames: Vec<String>,
    /// With `--runs N`: in how many runs it appeared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_in_runs: Option<u32>,
}

/// With `--runs N`: how often a scenario failed.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunsSummary {
    pub failed: u32,
    pub of: u32,
}

/// A scenario's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The kernel survived.
    Pass,
    /// The kernel did not: a splat, a hung client, an expectation that did not hold.
    Fail,
    /// The rig broke; this says nothing about the kernel.
    Error,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Error => "error",
        }
    }
}

/// A splat with the scenario step that was running when it appeared.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FoundSplat {
    #[serde(flatten)]
    pub splat: Splat,
    pub step: String,
    #[serde(default)]
    pub fingerprint: String,
    #[serde(default = "other")]
    pub subsystem: Subsystem,
    #[serde(default)]
    pub phase: CardPhase,
    /// Occurrences of this fingerprint in the scenario (this one included).
    #[serde(default)]
    pub count: usize,
    #[serde(default)]
    pub status: SplatStatus,
}

/// One scenario (or one cycle of a repeated one).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub name: String,
    /// Raw: pass only with no splat and every step held.
    pub verdict: Verdict,
    /// Judged against the baseline, `--judge-by` and `--runs` (see `verdict`).
    #[serde(default)]
    pub result: ScenarioResult,
    /// The baseline lists this scenario as a flake.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flake_listed: bool,
    /// Unique fingerprints, folded; `splats` keeps every occurrence.
    #[serde(default)]
    pub fingerprints: Vec<FingerprintSummary>,
    /// With `--runs N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<RunsSummary>,
    /// A debug checker (lockdep, KASAN) turned itself off during this scenario: later
    /// scenarios of the same boot would have run unchecked, so the next one boots afresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checker_off: Option<String>,
    pub driver_bound: bool,
    pub pci_address: Option<String>,
    pub splats: Vec<FoundSplat>,
    pub screenshot: Option<PathBuf>,
    pub duration_s: f64,
    /// Steps that did not hold (expectations, timeouts, rig failures); splats are listed
    /// separately in `splats`. A scenario with neither passed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// What the guest and the card reported, by name (e.g. `connector`, `vblank_irqs_per_s`).
    #[serde(default)]
    pub observations: BTreeMap<String, serde_json::Value>,
    /// Kernel log lines of this scenario.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_log: Vec<String>,
}

/// The whole run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub vanish_version: String,
    pub qemu_version: String,
    /// `uname -r` as the guest reports it.
    pub kernel: String,
    pub kernel_image: PathBuf,
    pub arch: String,
    pub model: String,
    /// `kvm` or `tcg`: what the guest ran under (empty if it never booted).
    #[serde(default)]
    pub accel: String,
    pub console_log: PathBuf,
    pub duration_s: f64,
    pub scenarios: Vec<ScenarioReport>,
    /// Set when the rig failed outside any scenario (QEMU did not start, a download failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `--runs N`: how many times everything was booted and run.
    #[serde(default = "one")]
    pub runs: u32,
}

fn other() -> Subsystem {
    Subsystem::Other
}

fn one() -> u32 {
    1
}

impl ScenarioReport {
    /// A scenario with nothing recorded yet.
    pub fn new(name: &str, verdict: Verdict) -> ScenarioReport {
        ScenarioReport {
            name: name.to_string(),
            verdict,
            result: ScenarioResult::default(),
            flake_listed: false,
            fingerprints: Vec::new(),
            runs: None,
            checker_off: None,
            driver_bound: false,
            pci_address: None,
            splats: Vec::new(),
            screenshot: None,
            duration_s: 0.0,
            problems: Vec::new(),
            observations: BTreeMap::new(),
            kernel_log: Vec::new(),
        }
    }
}

impl Report {
    /// A run of `model` on `arch` that has found nothing yet.
    pub fn new(model: &str, arch: &str, console_log: PathBuf) -> Report {
        Report {
            vanish_version: env!("CARGO_PKG_VERSION").to_string(),
            qemu_version: String::new(),
            kernel: String::new(),
            kernel_image: PathBuf::new(),
            arch: arch.to_string(),
            model: model.to_string(),
            accel: String::new(),
            console_log,
            duration_s: 0.0,
            scenarios: Vec::new(),
            error: None,
            runs: 1,
        }
    }

    /// The architecture's one user-facing name (`aarch64`, `x86_64`), also for a report.json
    /// written before vanish settled on it (`arm64`, `amd64`); anything else as it is.
    pub fn arch_name(&self) -> String {
        self.arch
            .parse::<images::Arch>()
            .map_or_else(|_| self.arch.clone(), |a| a.to_string())
    }

    /// The verdict of the whole run: error if the rig broke anywhere, else fail if any
    /// scenario failed.
    pub fn verdict(&self) -> Verdict {
        if self.error.is_some() || self.scenarios.iter().any(|s| s.verdict == Verdict::Error) {
            Verdict::Error
        } else if self.scenarios.iter().any(|s| s.verdict == Verdict::Fail) {
            Verdict::Fail
        } else if self.scenarios.is_empty() {
            Verdict::Error
        } else {
            Verdict::Pass
        }
    }

    /// `git bisect run` exit code for this report.
    pub fn exit_code(&self) -> i32 {
        match self.verdict() {
            Verdict::Pass => crate::exit::PASS,
            Verdict::Fail => crate::exit::FAIL,
            Verdict::Error => crate::exit::SKIP,
        }
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
    }

    /// The run's overall judged result: the worst scenario result.
    pub fn judged(&self) -> ScenarioResult {
        if self.error.is_some() || self.scenarios.is_empty() {
            return ScenarioResult::Error;
        }
        self.scenarios
            .iter()
            .map(|s| s.result)
            .max()
            .unwrap_or(ScenarioResult::Error)
    }
}

/// A scenario's judged outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScenarioResult {
    // In order of severity (`Ord` follows it): the worst result is the run's.
    #[default]
    Pass,
    Known,
    Fixed,
    Flake,
    Fail,
    Error,
}

impl ScenarioResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ScenarioResult::Pass => "pass",
            ScenarioResult::Fail => "fail",
            ScenarioResult::Known => "known",
            ScenarioResult::Flake => "flake",
            ScenarioResult::Fixed => "fixed",
            ScenarioResult::Error => "error",
        }
    }
}
