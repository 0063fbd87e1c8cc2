//! Scenarios: named lists of steps run in one boot, from TOML files or the built-in set.
//!
//! ```toml
//! name = "hotreplug"
//! description = "remove the card while a client holds it open, rescan while the old fd is open"
//! steps = [
//!   "wait-bound",
//!   "client idle-open",
//!   "unplug remove-rescan",
//!   "expect gone",
//!   "rescan",
//!   "wait-bound",
//!   "close idle-open",
//!   { repeat = 3, steps = ["unplug hot-unplug", "replug", "wait-bound"] },
//! ]
//! ```

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// How the card leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Removal {
    /// The guest unbinds the driver through sysfs; `bind` brings it back.
    Unbind,
    /// The guest removes the PCI device through sysfs; a bus `rescan` brings it back.
    RemoveRescan,
    /// QMP `device_del`: the guest's pciehp removes the device; `replug` brings a new card.
    HotUnplug,
    /// The card goes dead first (all-ones, no interrupts), then `device_del`.
    Surprise,
    /// The card server is SIGKILLed, then `device_del`.
    ServerCrash,
}

impl Removal {
    pub const ALL: [Removal; 5] = [
        Removal::Unbind,
        Removal::RemoveRescan,
        Removal::HotUnplug,
        Removal::Surprise,
        Removal::ServerCrash,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Removal::Unbind => "unbind",
            Removal::RemoveRescan => "remove-rescan",
            Removal::HotUnplug => "hot-unplug",
            Removal::Surprise => "surprise",
            Removal::ServerCrash => "server-crash",
        }
    }

    /// Whether the card leaves the guest's PCI bus (not just its driver).
    pub fn leaves_bus(self) -> bool {
        self != Removal::Unbind
    }

    /// What a removal does to the card before its slot is emptied: a surprise removal makes it
    /// dead, a server crash kills its server; the guest then gets [`DEAD_CARD_GRACE`] to meet
    /// the broken card before pciehp hears of the removal. `None`: the card is taken as it is.
    /// The one statement of the removal sequence, for `vanish ctl` and the runner.
    pub fn breaks_card_first(self) -> Option<CardBreak> {
        match self {
            Removal::Surprise => Some(CardBreak::Dead),
            Removal::ServerCrash => Some(CardBreak::ServerKilled),
            Removal::Unbind | Removal::RemoveRescan | Removal::HotUnplug => None,
        }
    }

    /// Whether the card leaves QEMU too, so coming back needs a new server and `device_add`.
    pub fn leaves_vm(self) -> bool {
        matches!(
            self,
            Removal::HotUnplug | Removal::Surprise | Removal::ServerCrash
        )
    }
}

/// How a removal breaks the card before its slot empties ([`Removal::breaks_card_first`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CardBreak {
    /// The card stops answering: reads all-ones, no interrupts (its server stays up).
    Dead,
    /// The card's server process dies (QEMU answers the card's accesses with all-ones).
    ServerKilled,
}

/// How long the guest meets a broken card (vblank, fbcon, clients) before the slot reports
/// its removal, as on real hardware where the link drops before the slot's presence bit.
pub const DEAD_CARD_GRACE: Duration = Duration::from_millis(500);

impl std::str::FromStr for Removal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Removal::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown removal mode '{s}' (expected {})",
                    Removal::ALL.map(|r| r.name()).join(", ")
                )
            })
    }
}

/// Userspace clients the guest agent runs: the protocol's own enum (one for host, agent and
/// scenarios; an `exec` command is not a client kind).
pub use guest_protocol::ClientKind;

/// Something that must hold at a point of a scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// The driver is bound to the card and its DRM device exists.
    Bound,
    /// The card is on the bus but no driver is bound; /dev/dri/card0 is gone.
    Unbound,
    /// The card is gone from /sys/bus/pci/devices and /dev/dri/card0 is gone.
    Gone,
    /// The card shows a picture (not a blank screen).
    Drawing,
    /// The card shows the kms client's colour bars.
    Pattern,
    /// Reads of the card's register BAR return all-ones (a dead card).
    BarReadsOnes,
    /// Vblank interrupts arrive (the count grows over a second).
    Vblank,
    /// At least one vblank interrupt arrived since boot (fbcon's modeset waited for one); holds
    /// trivially on a card without interrupts.
    VblankSinceBoot,
    /// The card's fbdev node (/dev/fb0) and DRM node (/dev/dri/card0) exist.
    CardNodes,
    /// The card sits behind QEMU's hotplug pcie-root-port (1b36:000c).
    BehindRootPort,
    /// fbcon has drawn on the card: the run's `screenshot.png`. Not drawing is a rig error: a
    /// kernel without fbcon on the card cannot be judged by the screen.
    ConsoleDrawn,
    /// The connector is connected and its first mode is this one, e.g. "1024x768".
    FirstMode(String),
    /// The named client got this signal (SIGBUS, SIGSEGV) through its mapping; for an `exec`
    /// command: it was killed by this signal.
    ClientSignal(String, String),
    /// The named client (or `exec` command) exited with this status.
    ClientStatus(String, i32),
    /// The named client saw this errno (ENODEV, EIO) from an ioctl.
    ClientIoctlError(String, String),
    /// The named client closed its fd without error and exited.
    ClientExited(String),
    /// The named client is still running and drawing (not killed, not hung).
    ClientAlive(String),
    /// What the named client's mapping does now (after a removal): reads back zeros (TTM's
    /// dummy page after drm_dev_unplug()), still takes writes (stale pages), or faulted.
    ClientMapping(String, MappingState),
}

/// How a client's mapping of the device behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MappingState {
    Zeroed,
    Stale,
    Faulted,
}

impl MappingState {
    pub fn name(self) -> &'static str {
        match self {
            MappingState::Zeroed => "zeroed",
            MappingState::Stale => "stale",
            MappingState::Faulted => "faulted",
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Bound => write!(f, "bound"),
            Condition::Unbound => write!(f, "unbound"),
            Condition::Gone => write!(f, "gone"),
            Condition::Drawing => write!(f, "drawing"),
            Condition::Pattern => write!(f, "pattern"),
            Condition::BarReadsOnes => write!(f, "bar-reads-ones"),
            Condition::Vblank => write!(f, "vblank"),
            Condition::VblankSinceBoot => write!(f, "vblank-since-boot"),
            Condition::CardNodes => write!(f, "card-nodes"),
            Condition::BehindRootPort => write!(f, "behind-root-port"),
            Condition::ConsoleDrawn => write!(f, "console-drawn"),
            Condition::FirstMode(m) => write!(f, "first-mode {m}"),
            Condition::ClientSignal(n, s) => write!(f, "client {n} signal {s}"),
            Condition::ClientStatus(n, s) => write!(f, "client {n} status {s}"),
            Condition::ClientIoctlError(n, e) => write!(f, "client {n} ioctl-error {e}"),
            Condition::ClientExited(n) => write!(f, "client {n} exited"),
            Condition::ClientAlive(n) => write!(f, "client {n} alive"),
            Condition::ClientMapping(n, m) => write!(f, "client {n} mapping {}", m.name()),
        }
    }
}

/// A guest command (`busybox sh -c COMMAND`) run by an `exec` step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exec {
    pub command: String,
    /// `as NAME`; unnamed commands get exec1, exec2... in the order they appear.
    pub name: String,
    pub background: bool,
    /// How long a foreground command may run (default 60 s); longer fails the scenario.
    pub timeout: Duration,
}

/// The default foreground `exec` timeout.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// One step of a scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    WaitBound(Duration),
    Client {
        kind: ClientKind,
        name: String,
        wait_ready: bool,
    },
    Close(String),
    /// `exec "COMMAND" [as NAME] [background] [timeout SECONDS]`: a guest shell command.
    Exec(Exec),
    Unplug(Removal),
    /// Brings the card back the way the last removal requires (bind, rescan or a new card).
    Replug,
    Bind,
    Unbind,
    Rescan,
    Dead,
    Alive,
    Sleep(Duration),
    Screenshot(String),
    /// Records the guest's view of the card and its connectors as observations.
    ObserveCard,
    Expect(Condition),
    Repeat(u32, Vec<Step>),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::WaitBound(_) => write!(f, "wait-bound"),
            Step::Client { kind, name, .. } if name == kind.name() => {
                write!(f, "client {}", kind.name())
            }
            Step::Client { kind, name, .. } => write!(f, "client {} as {name}", kind.name()),
            Step::Close(n) => write!(f, "close {n}"),
            Step::Exec(e) => {
                let quoted = shlex::try_quote(&e.command)
                    .map(|q| q.into_owned())
                    .unwrap_or_else(|_| format!("{:?}", e.command));
                write!(f, "exec {quoted}")?;
                if !e.name.is_empty() {
                    write!(f, " as {}", e.name)?;
                }
                if e.background {
                    write!(f, " background")?;
                }
                if e.timeout != EXEC_TIMEOUT {
                    write!(f, " timeout {}", e.timeout.as_secs_f64())?;
                }
                Ok(())
            }
            Step::Unplug(r) => write!(f, "unplug {}", r.name()),
            Step::Replug => write!(f, "replug"),
            Step::Bind => write!(f, "bind"),
            Step::Unbind => write!(f, "unbind"),
            Step::Rescan => write!(f, "rescan"),
            Step::Dead => write!(f, "dead"),
            Step::Alive => write!(f, "alive"),
            Step::Sleep(d) => write!(f, "sleep {}", d.as_secs_f64()),
            Step::Screenshot(n) => write!(f, "screenshot {n}"),
            Step::ObserveCard => write!(f, "observe card"),
            Step::Expect(c) => write!(f, "expect {c}"),
            Step::Repeat(n, s) => write!(f, "repeat {n} ({} steps)", s.len()),
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name != "."
        && name != ".."
}

/// `exec "COMMAND" [as NAME] [background] [timeout SECONDS]`, quoted as in a shell.
fn parse_exec(text: &str) -> Result<Step, String> {
    let words = shlex::split(text)
        .ok_or("unterminated quote in exec step (quote the command: exec \"COMMAND\")")?;
    let [_, command, rest @ ..] = words.as_slice() else {
        return Err(
            "exec needs a command: exec \"COMMAND\" [as NAME] [background] [timeout SECONDS]"
                .into(),
        );
    };
    if command.trim().is_empty() || command.contains('\n') || command.contains('\r') {
        return Err("an exec command is one non-empty line".into());
    }
    let mut e = Exec {
        command: command.clone(),
        name: String::new(),
        background: false,
        timeout: EXEC_TIMEOUT,
    };
    let mut rest = rest.iter();
    while let Some(w) = rest.next() {
        match w.as_str() {
            "as" => {
                let n = rest.next().ok_or("'as' needs a name")?;
                if !valid_name(n) {
                    return Err(format!("bad exec name '{n}' (1-64 of A-Za-z0-9._-)"));
                }
                e.name = n.clone();
            }
            "background" => e.background = true,
            "timeout" => {
                let t = rest.next().ok_or("'timeout' needs a number of seconds")?;
                e.timeout = t
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v > 0.0 && *v <= 3600.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| format!("'{t}' is not a number of seconds (0 to 3600)"))?;
            }
            other => {
                return Err(format!(
                    "unexpected '{other}' after exec's command (expected 'as NAME', 'background' or 'timeout SECONDS'; quote the command)"
                ))
            }
        }
    }
    Ok(Step::Exec(e))
}

/// Names unnamed `exec` steps exec1, exec2... in order, inside repeats too.
fn name_execs(steps: &mut [Step], n: &mut u32) {
    for s in steps {
        match s {
            Step::Exec(e) if e.name.is_empty() => {
                *n += 1;
                e.name = format!("exec{n}");
            }
            Step::Repeat(_, inner) => name_execs(inner, n),
            _ => {}
        }
    }
}

/// Parses one step's words.
pub fn parse_step(text: &str) -> Result<Step, String> {
    if text.split_whitespace().next() == Some("exec") {
        return parse_exec(text);
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    let secs = |s: &str| -> Result<Duration, String> {
        s.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0 && *v <= 3600.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("'{s}' is not a number of seconds (0 to 3600)"))
    };
    Ok(match words.as_slice() {
        ["wait-bound"] => Step::WaitBound(Duration::from_secs(60)),
        ["wait-bound", t] => Step::WaitBound(secs(t)?),
        ["client", kind, rest @ ..] => {
            let kind: ClientKind = kind.parse()?;
            let mut name = kind.name().to_string();
            let mut wait_ready = true;
            let mut rest = rest.iter();
            while let Some(w) = rest.next() {
                match *w {
                    "as" => name = rest.next().ok_or("'as' needs a client name")?.to_string(),
                    "nowait" => wait_ready = false,
                    other => return Err(format!("unexpected '{other}' after client (expected 'as NAME' or 'nowait')")),
                }
            }
            Step::Client { kind, name, wait_ready }
        }
        ["close", name] => Step::Close(name.to_string()),
        ["unplug", mode] => Step::Unplug(mode.parse()?),
        ["replug"] => Step::Replug,
        ["bind"] => Step::Bind,
        ["unbind"] => Step::Unbind,
        ["rescan"] => Step::Rescan,
        ["dead"] => Step::Dead,
        ["alive"] => Step::Alive,
        ["sleep", t] => Step::Sleep(secs(t)?),
        ["screenshot"] => Step::Screenshot("screenshot".into()),
        ["screenshot", name] if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') => {
            Step::Screenshot(name.to_string())
        }
        ["observe", "card"] => Step::ObserveCard,
        ["expect", cond @ ..] => Step::Expect(parse_condition(cond)?),
        [] => return Err("empty step".into()),
        [verb, ..] => {
            return Err(format!(
                "unknown step '{verb}' (expected wait-bound, client, exec, close, unplug, replug, bind, unbind, rescan, dead, alive, sleep, screenshot, observe card, expect or a repeat table)"
            ))
        }
    })
}

fn parse_condition(words: &[&str]) -> Result<Condition, String> {
    Ok(match words {
        ["bound"] => Condition::Bound,
        ["unbound"] => Condition::Unbound,
        ["gone"] => Condition::Gone,
        ["drawing"] => Condition::Drawing,
        ["pattern"] => Condition::Pattern,
        ["bar-reads-ones"] => Condition::BarReadsOnes,
        ["vblank"] => Condition::Vblank,
        ["vblank-since-boot"] => Condition::VblankSinceBoot,
        ["card-nodes"] => Condition::CardNodes,
        ["behind-root-port"] => Condition::BehindRootPort,
        ["console-drawn"] => Condition::ConsoleDrawn,
        ["first-mode", mode] if mode.split_once('x').is_some() => Condition::FirstMode(mode.to_string()),
        ["client", name, "signal", sig] if sig.starts_with("SIG") => Condition::ClientSignal(name.to_string(), sig.to_string()),
        ["client", name, "ioctl-error", errno] if errno.starts_with('E') => {
            Condition::ClientIoctlError(name.to_string(), errno.to_string())
        }
        ["client", name, "exited"] => Condition::ClientExited(name.to_string()),
        ["client", name, "status", n] => Condition::ClientStatus(
            name.to_string(),
            n.parse()
                .map_err(|_| format!("'{n}' is not an exit status (a number)"))?,
        ),
        ["client", name, "alive"] => Condition::ClientAlive(name.to_string()),
        ["client", name, "mapping", state] => Condition::ClientMapping(
            name.to_string(),
            match *state {
                "zeroed" => MappingState::Zeroed,
                "stale" => MappingState::Stale,
                "faulted" => MappingState::Faulted,
                other => return Err(format!("unknown mapping state '{other}' (expected zeroed, stale or faulted)")),
            },
        ),
        _ => {
            return Err(format!(
                "unknown condition '{}' (expected bound, unbound, gone, drawing, pattern, bar-reads-ones, vblank, vblank-since-boot, card-nodes, behind-root-port, console-drawn, first-mode WxH, client NAME signal SIGxxx, client NAME ioctl-error Exxx, client NAME exited, client NAME status N, client NAME alive, client NAME mapping zeroed|stale|faulted)",
                words.join(" ")
            ))
        }
    })
}

/// A parsed scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub steps: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    #[serde(default)]
    description: String,
    steps: Vec<toml::Spanned<toml::Value>>,
}

/// 1-based line of a byte offset.
fn line_of(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())].matches('\n').count() + 1
}

/// Converts step values found inside `span` of the source. Spans are only known for the
/// top-level array's elements, so a step nested in a repeat table is located by searching for
/// its text inside the table.
fn convert(
    src: &str,
    file: &str,
    span: std::ops::Range<usize>,
    value: &toml::Value,
) -> Result<Step, String> {
    let at = |needle: Option<&str>| {
        let region = src.get(span.clone()).unwrap_or("");
        let offset = needle.and_then(|n| region.find(n)).unwrap_or(0);
        format!("{file}:{}", line_of(src, span.start + offset))
    };
    match value {
        toml::Value::String(text) => {
            parse_step(text).map_err(|e| format!("{}: {e}", at(Some(text))))
        }
        toml::Value::Table(t) => {
            let unknown: Vec<&String> = t
                .keys()
                .filter(|k| *k != "repeat" && *k != "steps")
                .collect();
            if let Some(k) = unknown.first() {
                return Err(format!(
                    "{}: unknown key '{k}' in a repeat table (expected repeat and steps)",
                    at(Some(k))
                ));
            }
            let n = match t.get("repeat") {
                Some(toml::Value::Integer(n)) if (1..=1000).contains(n) => *n as u32,
                Some(toml::Value::Integer(n)) => {
                    return Err(format!(
                        "{}: repeat count {n} is out of range (1 to 1000)",
                        at(Some("repeat"))
                    ))
                }
                _ => {
                    return Err(format!(
                        "{}: a repeat table needs 'repeat = N' (a number)",
                        at(None)
                    ))
                }
            };
            let Some(toml::Value::Array(steps)) = t.get("steps") else {
                return Err(format!(
                    "{}: a repeat table needs 'steps = [...]'",
                    at(None)
                ));
            };
            let steps = steps
                .iter()
                .map(|v| convert(src, file, span.clone(), v))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Step::Repeat(n, steps))
        }
        other => Err(format!(
            "{}: a step is a string or a repeat table, not a {}",
            at(None),
            other.type_str()
        )),
    }
}

impl Scenario {
    /// Parses a scenario file's text; errors name the file and line.
    pub fn parse(src: &str, file: &str) -> Result<Scenario, String> {
        let raw: ScenarioFile = toml::from_str(src).map_err(|e| {
            let line = e.span().map(|s| line_of(src, s.start)).unwrap_or(1);
            format!("{file}:{line}: {}", e.message())
        })?;
        if raw.name.is_empty()
            || !raw
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "{file}:1: scenario name '{}' must be letters, digits, '-', '_' or '.'",
                raw.name
            ));
        }
        let mut steps = raw
            .steps
            .iter()
            .map(|v| convert(src, file, v.span(), v.get_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        name_execs(&mut steps, &mut 0);
        if steps.is_empty() {
            return Err(format!("{file}: a scenario needs at least one step"));
        }
        Ok(Scenario {
            name: raw.name,
            description: raw.description,
            steps,
        })
    }

    pub fn load(path: &Path) -> Result<Scenario, String> {
        let src = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Scenario::parse(&src, &path.display().to_string())
    }

    /// A built-in scenario by name, or a file.
    pub fn resolve(name_or_file: &str) -> Result<Scenario, String> {
        if let Some(s) = builtin().into_iter().find(|s| s.name == name_or_file) {
            return Ok(s);
        }
        let path = Path::new(name_or_file);
        if path.exists() || name_or_file.ends_with(".toml") {
            return Scenario::load(path);
        }
        Err(format!(
            "no built-in scenario or file named '{name_or_file}' (see `vanish list`)"
        ))
    }

    /// The scenario `vanish run --unplug MODE --repeat N` runs: N cycles of remove and return,
    /// each checked from inside the guest.
    pub fn cycle(mode: Removal) -> Scenario {
        let mut steps = Vec::new();
        if mode == Removal::Surprise {
            // The card dies first; the guest must read all-ones from it before the slot empties.
            steps.push(Step::Dead);
            steps.push(Step::Expect(Condition::BarReadsOnes));
        }
        steps.push(Step::Unplug(mode));
        steps.push(Step::Expect(if mode.leaves_bus() {
            Condition::Gone
        } else {
            Condition::Unbound
        }));
        steps.push(Step::Replug);
        steps.push(Step::WaitBound(Duration::from_secs(60)));
        steps.push(Step::Expect(Condition::Drawing));
        Scenario {
            name: mode.name().to_string(),
            description: format!("{} and back", mode.name()),
            steps,
        }
    }
}

/// The built-in set: IGT core_hotunplug's subtests on our cards, plus what IGT cannot do.
pub const BUILTIN_TOML: &[(&str, &str)] = &[
    (
        "unbind-rebind",
        include_str!("../scenarios/unbind-rebind.toml"),
    ),
    (
        "unplug-rescan",
        include_str!("../scenarios/unplug-rescan.toml"),
    ),
    (
        "hotunbind-rebind",
        include_str!("../scenarios/hotunbind-rebind.toml"),
    ),
    (
        "hotunplug-rescan",
        include_str!("../scenarios/hotunplug-rescan.toml"),
    ),
    ("hotrebind", include_str!("../scenarios/hotrebind.toml")),
    ("hotreplug", include_str!("../scenarios/hotreplug.toml")),
    (
        "hotrebind-lateclose",
        include_str!("../scenarios/hotrebind-lateclose.toml"),
    ),
    (
        "hotreplug-lateclose",
        include_str!("../scenarios/hotreplug-lateclose.toml"),
    ),
    (
        "surprise-with-mmap",
        include_str!("../scenarios/surprise-with-mmap.toml"),
    ),
    (
        "server-crash",
        include_str!("../scenarios/server-crash.toml"),
    ),
    (
        "surprise-during-modeset",
        include_str!("../scenarios/surprise-during-modeset.toml"),
    ),
    (
        "hotunplug-fbdev-write",
        include_str!("../scenarios/hotunplug-fbdev-write.toml"),
    ),
    (
        "surprise-fbdev-write",
        include_str!("../scenarios/surprise-fbdev-write.toml"),
    ),
];

/// The built-in scenarios, parsed (they are tested to parse).
/// The boot scenario every run starts with (`scenarios/boot.toml`).
pub const BOOT_TOML: &str = include_str!("../scenarios/boot.toml");

/// The boot scenario, parsed.
pub fn boot() -> Scenario {
    // BOOT_TOML is part of the binary and `boot_is_a_scenario_file_like_the_others` parses
    // it: a broken one fails the tests, not a user's run.
    Scenario::parse(BOOT_TOML, "builtin:boot").expect("the built-in boot.toml parses")
}

pub fn builtin() -> Vec<Scenario> {
    BUILTIN_TOML
        .iter()
        .filter_map(|(name, src)| Scenario::parse(src, &format!("builtin:{name}")).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_parses_and_is_named_after_its_file() {
        for (name, src) in BUILTIN_TOML {
            let s = Scenario::parse(src, name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&s.name, name);
            assert!(!s.description.is_empty(), "{name} has no description");
        }
        assert_eq!(builtin().len(), BUILTIN_TOML.len());
    }

    #[test]
    fn only_surprise_and_server_crash_break_the_card_first() {
        let broken: Vec<_> = Removal::ALL
            .into_iter()
            .filter_map(|r| r.breaks_card_first().map(|b| (r, b)))
            .collect();
        assert_eq!(
            broken,
            [
                (Removal::Surprise, CardBreak::Dead),
                (Removal::ServerCrash, CardBreak::ServerKilled)
            ]
        );
        // A card that breaks first always leaves the VM (its slot is emptied after).
        assert!(broken.iter().all(|(r, _)| r.leaves_vm()));
    }

    #[test]
    fn boot_is_a_scenario_file_like_the_others() {
        let boot = Scenario::parse(BOOT_TOML, "boot").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(boot, super::boot());
        assert_eq!(boot.name, "boot");
        let steps: Vec<String> = boot.steps.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            steps,
            [
                "wait-bound",
                "observe card",
                "expect card-nodes",
                "expect behind-root-port",
                "expect console-drawn",
                "expect vblank-since-boot"
            ]
        );
        // Its steps round-trip through their text like any step.
        for s in &boot.steps {
            assert_eq!(parse_step(&s.to_string()).as_ref(), Ok(s));
        }
        assert!(!builtin().iter().any(|s| s.name == "boot"));
    }

    #[test]
    fn steps_parse() {
        assert_eq!(
            parse_step("unplug surprise"),
            Ok(Step::Unplug(Removal::Surprise))
        );
        assert_eq!(
            parse_step("client kms as k2 nowait"),
            Ok(Step::Client {
                kind: ClientKind::Kms,
                name: "k2".into(),
                wait_ready: false
            })
        );
        assert_eq!(
            parse_step("expect client kms signal SIGBUS"),
            Ok(Step::Expect(Condition::ClientSignal(
                "kms".into(),
                "SIGBUS".into()
            )))
        );
        assert_eq!(
            parse_step("sleep 0.5"),
            Ok(Step::Sleep(Duration::from_millis(500)))
        );
        assert!(parse_step("unplug sideways")
            .unwrap_err()
            .contains("unknown removal mode"));
        assert!(parse_step("sleep -1").is_err());
        assert!(parse_step("sleep NaN").is_err());
        assert!(parse_step("expect happiness")
            .unwrap_err()
            .contains("unknown condition"));
    }

    #[test]
    fn steps_print_as_they_are_written() {
        for text in [
            "expect client kms signal SIGBUS",
            "unplug hot-unplug",
            "client kms as k2",
            "expect first-mode 1024x768",
            "wait-bound",
        ] {
            assert_eq!(parse_step(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn repeat_tables_nest() {
        let src = "name = \"r\"\nsteps = [\n  \"wait-bound\",\n  { repeat = 3, steps = [\"unplug unbind\", \"replug\"] },\n]\n";
        let s = Scenario::parse(src, "r.toml").unwrap();
        assert_eq!(
            s.steps[1],
            Step::Repeat(3, vec![Step::Unplug(Removal::Unbind), Step::Replug])
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let src = "name = \"bad\"\nsteps = [\n  \"wait-bound\",\n  \"unplug sideways\",\n]\n";
        let e = Scenario::parse(src, "bad.toml").unwrap_err();
        assert!(
            e.starts_with("bad.toml:4: unknown removal mode 'sideways'"),
            "{e}"
        );

        let e = Scenario::parse("name = \"x\"\nstepz = []\n", "x.toml").unwrap_err();
        assert!(e.starts_with("x.toml:"), "{e}");

        let src = "name = \"r\"\nsteps = [\n { repeat = 0, steps = [\"replug\"] },\n]\n";
        let e = Scenario::parse(src, "r.toml").unwrap_err();
        assert!(e.starts_with("r.toml:3: repeat count 0"), "{e}");

        let src = "name = \"r\"\nsteps = [\n  { repeat = 2, steps = [\n    \"replug\",\n    \"unplug nowhere\",\n  ] },\n]\n";
        let e = Scenario::parse(src, "r.toml").unwrap_err();
        assert!(
            e.starts_with("r.toml:5: unknown removal mode 'nowhere'"),
            "{e}"
        );

        let e = Scenario::parse("name = \"x\"\nsteps = [\"dance\"]\n", "x.toml").unwrap_err();
        assert!(e.starts_with("x.toml:2: unknown step 'dance'"), "{e}");
    }

    #[test]
    fn exec_steps_parse() {
        let e = |command: &str, name: &str, background: bool, secs: u64| {
            Step::Exec(Exec {
                command: command.into(),
                name: name.into(),
                background,
                timeout: Duration::from_secs(secs),
            })
        };
        assert_eq!(
            parse_step(r#"exec "cat /dev/urandom > /dev/fb0" as writer background"#),
            Ok(e("cat /dev/urandom > /dev/fb0", "writer", true, 60))
        );
        assert_eq!(parse_step("exec true"), Ok(e("true", "", false, 60)));
        assert_eq!(
            parse_step(r#"exec 'echo "a b"; exit 3' timeout 5"#),
            Ok(e(r#"echo "a b"; exit 3"#, "", false, 5))
        );
        assert_eq!(
            parse_step(r#"exec "sleep 1" timeout 2 background as s"#),
            Ok(e("sleep 1", "s", true, 2))
        );
        assert!(parse_step(r#"exec "cat /dev/zero"#)
            .unwrap_err()
            .contains("unterminated quote"));
        assert!(parse_step("exec").unwrap_err().contains("needs a command"));
        assert!(parse_step(r#"exec "" as x"#).is_err());
        assert!(parse_step(r#"exec "true" as ../x"#).is_err());
        assert!(parse_step(r#"exec "true" timeout 0"#).is_err());
        assert!(parse_step(r#"exec "true" timeout"#).is_err());
        assert!(parse_step("exec cat /dev/zero")
            .unwrap_err()
            .contains("unexpected '/dev/zero'"));
        assert_eq!(
            parse_step("expect client w status 3"),
            Ok(Step::Expect(Condition::ClientStatus("w".into(), 3)))
        );
        assert!(parse_step("expect client w status x").is_err());
        for text in [
            "exec 'cat /dev/urandom > /dev/fb0' as writer background",
            "exec true as t timeout 5",
            "expect client w status 0",
        ] {
            assert_eq!(parse_step(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn unnamed_execs_are_numbered_and_quote_errors_name_the_line() {
        let src = "name = \"x\"\nsteps = [\n  \"exec true\",\n  'exec \"sleep 9\" background',\n  { repeat = 2, steps = [\"exec false as f\", \"exec :\"] },\n]\n";
        let s = Scenario::parse(src, "x.toml").unwrap();
        let names: Vec<String> = [&s.steps[0], &s.steps[1]]
            .into_iter()
            .chain(match &s.steps[2] {
                Step::Repeat(_, inner) => inner.iter().collect::<Vec<_>>(),
                _ => vec![],
            })
            .map(|st| match st {
                Step::Exec(e) => e.name.clone(),
                other => panic!("{other}"),
            })
            .collect();
        assert_eq!(names, ["exec1", "exec2", "f", "exec3"]);

        let src =
            "name = \"q\"\nsteps = [\n  \"wait-bound\",\n  'exec \"cat /dev/zero > /dev/fb0',\n]\n";
        let e = Scenario::parse(src, "q.toml").unwrap_err();
        assert!(e.starts_with("q.toml:4: unterminated quote"), "{e}");
    }

    #[test]
    fn resolve_finds_builtins_and_rejects_unknown_names() {
        assert_eq!(Scenario::resolve("hotreplug").unwrap().name, "hotreplug");
        assert!(Scenario::resolve("no-such-thing")
            .unwrap_err()
            .contains("vanish list"));
    }

    #[test]
    fn cycle_checks_the_card_left_and_came_back() {
        let s = Scenario::cycle(Removal::Unbind);
        assert_eq!(s.steps[1], Step::Expect(Condition::Unbound));
        let s = Scenario::cycle(Removal::Surprise);
        assert_eq!(
            s.steps[..4],
            [
                Step::Dead,
                Step::Expect(Condition::BarReadsOnes),
                Step::Unplug(Removal::Surprise),
                Step::Expect(Condition::Gone)
            ]
        );
    }
}
