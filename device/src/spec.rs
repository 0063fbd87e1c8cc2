//! [`CardSpec`]: one card as a user chose it, the one shape of the card options.
//!
//! The CLI parses the options once (clap, in `hotplug_ctl`), [`CardSpec::new`] checks them once
//! with one rule per field, and the runner hands the spec whole to the card server it starts
//! (as JSON, `vanish serve --spec-json`); the server's deserialisation runs the same checks, so
//! a spec that was edited on the way is refused there with the same words.

use serde::{Deserialize, Serialize};

use crate::ModelKind;

/// Largest VRAM BAR: the hotplug root port reserves a 64 MiB prefetchable window
/// (`pref32-reserve=64M`, `hpmmioprefsize=64M`), and a hot-added card's BAR must fit in it.
pub const MAX_VRAM: u64 = 64 << 20;

/// Largest EDID either card serves: hibmc's DDC EEPROM holds 256 bytes (block 0 and one
/// extension); bochs' EDID window is larger, but bochs-drm reads the same 256.
pub const MAX_EDID: usize = 256;

/// What is on the card's connector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Monitor {
    /// The card's default monitor (1024x768 preferred; [`crate::edid::default_edid`]).
    #[default]
    Default,
    /// No monitor: the card serves no EDID (hibmc: nothing acks on DDC).
    Absent,
    /// A monitor with this EDID (checked: a valid EDID of at most [`MAX_EDID`] bytes).
    Edid(Vec<u8>),
}

impl Monitor {
    /// The EDID to serve, or `None` without a monitor.
    pub fn edid(&self) -> Option<Vec<u8>> {
        match self {
            Monitor::Default => Some(crate::edid::default_edid()),
            Monitor::Absent => None,
            Monitor::Edid(blob) => Some(blob.clone()),
        }
    }
}

/// A card option that breaks its rule: the message names the option as the CLI spells it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("--vram-size {size}: a power of two from {} MiB to {} MiB for a {model} card (a PCI BAR that fits the hotplug window{})", min >> 20, MAX_VRAM >> 20, if *model == "bochs" { "; bochs-drm ignores a card with less than 4 MiB" } else { "" })]
    VramSize {
        size: u64,
        min: u64,
        model: &'static str,
    },
    #[error("--edid: {0}")]
    Edid(String),
}

/// One card: which model, how much VRAM, which monitor.
///
/// Invariant: every `CardSpec` obeys the rules of [`CardSpec::new`] (its fields are private and
/// deserialisation goes through the same checks), so a model can build from any spec without
/// checking again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SpecFields", into = "SpecFields")]
pub struct CardSpec {
    model: ModelKind,
    vram_size: u64,
    monitor: Monitor,
}

/// The serialised form of a [`CardSpec`], checked on the way in.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFields {
    model: ModelKind,
    vram_size: u64,
    #[serde(default)]
    monitor: Monitor,
}

impl TryFrom<SpecFields> for CardSpec {
    type Error = SpecError;
    fn try_from(f: SpecFields) -> Result<CardSpec, SpecError> {
        CardSpec::new(f.model, Some(f.vram_size), f.monitor)
    }
}

impl From<CardSpec> for SpecFields {
    fn from(s: CardSpec) -> SpecFields {
        SpecFields {
            model: s.model,
            vram_size: s.vram_size,
            monitor: s.monitor,
        }
    }
}

impl CardSpec {
    /// Checks the options, one rule per field:
    /// - `vram_size` (default: the model's): a power of two from the model's
    ///   [`crate::ModelInfo::min_vram_size`] to [`MAX_VRAM`];
    /// - `monitor`: an EDID must be valid ([`crate::edid::validate`]) and at most [`MAX_EDID`]
    ///   bytes.
    pub fn new(
        model: ModelKind,
        vram_size: Option<u64>,
        monitor: Monitor,
    ) -> Result<CardSpec, SpecError> {
        let info = model.info();
        let size = vram_size.unwrap_or(info.default_vram_size);
        if !size.is_power_of_two() || !(info.min_vram_size..=MAX_VRAM).contains(&size) {
            return Err(SpecError::VramSize {
                size,
                min: info.min_vram_size,
                model: info.name,
            });
        }
        if let Monitor::Edid(blob) = &monitor {
            crate::edid::validate(blob).map_err(SpecError::Edid)?;
            if blob.len() > MAX_EDID {
                return Err(SpecError::Edid(format!(
                    "{} bytes; the cards serve at most {MAX_EDID} (block 0 and one extension)",
                    blob.len()
                )));
            }
        }
        Ok(CardSpec {
            model,
            vram_size: size,
            monitor,
        })
    }

    /// The model's defaults: its VRAM size and the default monitor.
    pub fn of(model: ModelKind) -> CardSpec {
        CardSpec {
            model,
            vram_size: model.info().default_vram_size,
            monitor: Monitor::Default,
        }
    }

    pub fn model(&self) -> ModelKind {
        self.model
    }

    /// VRAM (the VRAM BAR's size) in bytes.
    pub fn vram_size(&self) -> u64 {
        self.vram_size
    }

    pub fn monitor(&self) -> &Monitor {
        &self.monitor
    }

    /// The spec as the JSON the card server takes (`vanish serve --spec-json`).
    pub fn to_json(&self) -> String {
        // A CardSpec has no map with non-string keys and no float: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A spec from [`CardSpec::to_json`]'s JSON, checked as [`CardSpec::new`] checks.
    pub fn from_json(text: &str) -> Result<CardSpec, String> {
        serde_json::from_str(text).map_err(|e| format!("card spec: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_model() {
        let h = CardSpec::new(ModelKind::Hibmc, None, Monitor::Default).expect("default");
        assert_eq!(h, CardSpec::of(ModelKind::Hibmc));
        assert_eq!(h.vram_size(), 32 << 20);
        assert_eq!(CardSpec::of(ModelKind::Bochs).vram_size(), 16 << 20);
    }

    #[test]
    fn vram_is_one_rule_with_the_models_floor() {
        for bad in [3 << 20, 0, 128 << 20, 1 << 19] {
            let e = CardSpec::new(ModelKind::Hibmc, Some(bad), Monitor::Default);
            assert!(matches!(e, Err(SpecError::VramSize { .. })), "{bad}: {e:?}");
        }
        assert!(CardSpec::new(ModelKind::Hibmc, Some(1 << 20), Monitor::Default).is_ok());
        assert!(CardSpec::new(ModelKind::Hibmc, Some(MAX_VRAM), Monitor::Default).is_ok());
        // bochs-drm ignores a card with less than 4 MiB: refused, not silently enlarged.
        let e = CardSpec::new(ModelKind::Bochs, Some(2 << 20), Monitor::Default)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("power of two from 4 MiB to 64 MiB"), "{e}");
        assert!(e.contains("bochs-drm"), "{e}");
    }

    #[test]
    fn an_edid_must_be_valid_and_fit() {
        let good = crate::edid::default_edid();
        assert!(CardSpec::new(ModelKind::Bochs, None, Monitor::Edid(good.clone())).is_ok());
        let mut bad = good.clone();
        bad[0] = 1;
        let e = CardSpec::new(ModelKind::Bochs, None, Monitor::Edid(bad));
        assert!(matches!(e, Err(SpecError::Edid(_))), "{e:?}");
        // Three blocks: valid as an EDID, too big for the cards.
        let mut three = good[..128].to_vec();
        three[126] = 2;
        let sum = three[..127].iter().fold(0u8, |a, b| a.wrapping_add(*b));
        three[127] = 0u8.wrapping_sub(sum);
        let mut ext = vec![0u8; 128];
        ext[0] = 0x02;
        ext[1] = 0x03;
        let esum = ext[..127].iter().fold(0u8, |a, b| a.wrapping_add(*b));
        ext[127] = 0u8.wrapping_sub(esum);
        three.extend_from_slice(&ext);
        three.extend_from_slice(&ext);
        assert!(crate::edid::validate(&three).is_ok());
        let e = CardSpec::new(ModelKind::Hibmc, None, Monitor::Edid(three))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("384 bytes"), "{e}");
    }

    #[test]
    fn json_round_trips_and_is_checked_on_the_way_in() {
        let spec = CardSpec::new(ModelKind::Hibmc, Some(16 << 20), Monitor::Absent).expect("ok");
        let json = spec.to_json();
        assert_eq!(
            json,
            r#"{"model":"hibmc","vram_size":16777216,"monitor":"absent"}"#
        );
        assert_eq!(CardSpec::from_json(&json), Ok(spec));
        let edid = CardSpec::new(
            ModelKind::Bochs,
            None,
            Monitor::Edid(crate::edid::default_edid()),
        )
        .expect("ok");
        assert_eq!(CardSpec::from_json(&edid.to_json()), Ok(edid));
        // The same rules as new(): a spec edited on its way to the server is refused there.
        let e = CardSpec::from_json(r#"{"model":"hibmc","vram_size":3145728}"#).unwrap_err();
        assert!(e.contains("power of two"), "{e}");
        assert!(CardSpec::from_json(r#"{"model":"hibmc","vram_size":1048576,"x":1}"#).is_err());
        assert!(CardSpec::from_json(r#"{"model":"voodoo","vram_size":1048576}"#).is_err());
        assert!(CardSpec::from_json(r#"{"model":"hibmc""#).is_err());
        let absent_monitor = CardSpec::from_json(r#"{"model":"bochs","vram_size":16777216}"#);
        assert_eq!(absent_monitor, Ok(CardSpec::of(ModelKind::Bochs)));
    }
}
