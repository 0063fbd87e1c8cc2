//! What a run found: `report.json`, and the table printed at the end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::splat::Splat;

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
}

/// One scenario (or one cycle of a repeated one).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub name: String,
    pub verdict: Verdict,
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
}

impl Report {
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

    /// A short human-readable table, then each splat with its call trace.
    pub fn table(&self) -> String {
        // Only what is known: a run that stopped before provisioning names no kernel or QEMU.
        let mut head = vec![format!("vanish {}", self.vanish_version)];
        head.push(match self.kernel.as_str() {
            "" => format!("{} ({})", self.model, self.arch),
            k => format!("{} on {k} ({})", self.model, self.arch),
        });
        if !self.qemu_version.is_empty() {
            head.push(format!("QEMU {}", self.qemu_version));
        }
        if !self.accel.is_empty() {
            head.push(self.accel.to_uppercase());
        }
        let mut out = head.join(" · ") + "\n";
        out += &format!(
            "{:<28} {:<7} {:<10} {:<14} {:>6} {:>8}\n",
            "SCENARIO", "VERDICT", "DRIVER", "PCI", "SPLATS", "TIME"
        );
        for s in &self.scenarios {
            out += &format!(
                "{:<28} {:<7} {:<10} {:<14} {:>6} {:>7.1}s\n",
                s.name,
                s.verdict.as_str(),
                if s.driver_bound { "bound" } else { "-" },
                s.pci_address.as_deref().unwrap_or("-"),
                s.splats.len(),
                s.duration_s
            );
            for p in &s.problems {
                out += &format!("    {p}\n");
            }
        }
        for s in &self.scenarios {
            for f in &s.splats {
                out += &format!(
                    "\n[{}] {} during '{}': {}\n",
                    s.name,
                    f.splat.kind.as_str(),
                    f.step,
                    f.splat.first_line
                );
                for frame in f.splat.call_trace.iter().take(12) {
                    out += &format!("    {frame}\n");
                }
            }
        }
        if let Some(e) = &self.error {
            out += &format!("rig error: {e}\n");
        }
        out += &format!(
            "verdict: {} ({:.1}s)\n",
            self.verdict().as_str(),
            self.duration_s
        );
        out
    }
}
