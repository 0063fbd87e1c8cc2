//! What the host can ask the guest agent, and what the agent answers: the one contract between
//! `hotplug_ctl` (the runner) and `images/agent` (the static agent in the guest). No I/O here.
//!
//! Framing on the virtio-serial port: the host writes one line `@req <Request as JSON>`; the
//! agent answers one line `\x1e<Reply as JSON>`. The only other thing the port carries is the
//! raw pty relay of `vanish run --shell` (the line `@shell ROWS COLS`, see the agent's
//! `shell.rs`), which is not part of this contract; the host skips lines that do not start
//! with [`REPLY_MARK`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Starts a request line.
pub const REQUEST_PREFIX: &str = "@req ";
/// Starts a reply line (ASCII record separator: never in ordinary output).
pub const REPLY_MARK: char = '\u{1e}';

/// One thing the host asks the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Is the agent there, and which kernel runs? -> [`Reply::Status`].
    Status,
    /// The guest's view of the first PCI function with these IDs -> [`Reply::Card`].
    CardStatus { vendor: u16, device: u16 },
    /// Re-probe the card's connectors (as xrandr would, with the device's own size limits)
    /// and list them -> [`Reply::Connectors`]. Needed on 7.x, whose fbdev client re-probes
    /// every 10 s with its framebuffer's size as the limit, pruning bigger modes from sysfs.
    ProbeModes { vendor: u16, device: u16 },
    /// Total interrupts on /proc/interrupts lines that mention `name` -> [`Reply::IrqCount`].
    IrqCount { name: String },
    /// One 32-bit read of memory BAR `bar` of `bdf` at `offset`, as the CPU sees it (through
    /// sysfs `resourceN`) -> [`Reply::Peek`].
    Peek { bdf: String, bar: u8, offset: u64 },
    /// Write `value` to the sysfs file `path` (bind, unbind, remove, rescan) -> [`Reply::Done`];
    /// if the kernel has not returned after `timeout_ms`, [`GuestError::Timeout`].
    SysfsWrite {
        path: String,
        value: String,
        timeout_ms: u64,
    },
    /// Start one of the agent's DRM/fbdev clients on `device` -> [`Reply::Started`]. With
    /// `wait`, the reply comes once the client is ready (and carries its report).
    ClientStart {
        id: String,
        kind: ClientKind,
        device: String,
        wait: bool,
    },
    /// A client's (or background command's) report -> [`Reply::Client`].
    ClientReport { id: String },
    /// SIGTERM (a command's group: SIGKILL after a grace), wait up to `timeout_ms`, and the
    /// final report -> [`Reply::Client`] (`state` "hung" if it is still there).
    ClientStop { id: String, timeout_ms: u64 },
    /// Run `sh -c cmd` in the background as client `id` -> [`Reply::Started`].
    ExecStart { id: String, cmd: String },
    /// Run `sh -c cmd` to its end, stopping it after `timeout_ms` -> [`Reply::Client`] with
    /// `timed_out`, `stdout`, `stderr` among the details.
    ExecRun {
        id: String,
        timeout_ms: u64,
        cmd: String,
    },
}

/// The agent's userspace clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientKind {
    /// Opens the DRM node, sets a mode and flips frames with the colour bars.
    Kms,
    /// Maps /dev/fbN and writes to it.
    Fbdev,
    /// Holds the DRM node open and does nothing.
    IdleOpen,
}

impl ClientKind {
    /// Every kind, in the order usage texts list them.
    pub const ALL: [ClientKind; 3] = [ClientKind::Kms, ClientKind::Fbdev, ClientKind::IdleOpen];

    /// The name on the agent's command line, in scenarios and in reports (the serde name too).
    pub fn name(self) -> &'static str {
        match self {
            ClientKind::Kms => "kms",
            ClientKind::Fbdev => "fbdev",
            ClientKind::IdleOpen => "idle-open",
        }
    }

    /// The device a client of this kind opens when none is named.
    pub fn default_device(self) -> &'static str {
        match self {
            ClientKind::Kms | ClientKind::IdleOpen => "/dev/dri/card0",
            ClientKind::Fbdev => "/dev/fb0",
        }
    }
}

impl std::fmt::Display for ClientKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ClientKind {
    type Err = String;

    fn from_str(s: &str) -> Result<ClientKind, String> {
        ClientKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown client '{s}' (expected kms, fbdev or idle-open)"))
    }
}

/// The agent's answer to one [`Request`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "reply",
    content = "body",
    rename_all = "kebab-case",
    deny_unknown_fields
)]
pub enum Reply {
    Status {
        kernel_release: String,
    },
    Card(CardStatus),
    Connectors(Vec<Connector>),
    IrqCount(u64),
    Peek(u32),
    /// A write or other action that has nothing to report.
    Done,
    Started {
        id: String,
        pid: i32,
        /// The client's report once it was ready (`wait`); none for commands.
        report: Option<ClientReport>,
    },
    Client(ClientReport),
    Error(GuestError),
}

/// Why the agent could not do what it was asked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "kebab-case", deny_unknown_fields)]
pub enum GuestError {
    /// The kernel did not return within the request's timeout (a hung sysfs write): the
    /// agent gave up waiting; the thread that called the kernel is still stuck there.
    Timeout { what: String, waited_ms: u64 },
    /// The request was carried out and failed (e.g. a sysfs write returned ENODEV).
    Failed { message: String },
    /// A client did not start or did not become ready; its report if it has one.
    ClientFailed {
        message: String,
        // Boxed: a report is large, and this error travels in every Result of the agent.
        report: Option<Box<ClientReport>>,
    },
    /// No client has this id.
    NoClient { id: String },
    /// The request did not decode or names something invalid.
    BadRequest { message: String },
}

impl std::fmt::Display for GuestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuestError::Timeout { what, waited_ms } => {
                write!(f, "{what} did not return within {waited_ms} ms")
            }
            GuestError::Failed { message } | GuestError::ClientFailed { message, .. } => {
                f.write_str(message)
            }
            GuestError::NoClient { id } => write!(f, "no client {id}"),
            GuestError::BadRequest { message } => write!(f, "bad request: {message}"),
        }
    }
}

impl std::error::Error for GuestError {}

/// The guest's view of the card: what `/sys/bus/pci/devices/BDF` and /dev say. When the card
/// is not on the bus only `present` (false) is filled in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CardStatus {
    pub present: bool,
    /// e.g. `0000:01:00.0`.
    pub pci_address: Option<String>,
    pub sysfs_path: Option<String>,
    /// The upstream bridge's address.
    pub parent: Option<String>,
    /// The upstream bridge's `vendor:device`, e.g. `0x1b36:0x000c` (QEMU's pcie-root-port).
    pub parent_id: Option<String>,
    pub parent_class: Option<String>,
    /// The bound driver's name, if any.
    pub driver: Option<String>,
    /// The PCI command register as four hex digits, e.g. `0007`.
    pub command: Option<String>,
    /// The card's DRM devices (`card0`, ...), sorted.
    pub drm: Vec<String>,
    /// The card's fbdev devices (`fb0`, ...), sorted.
    pub fb: Vec<String>,
    /// Everything in /dev/dri, sorted.
    pub dri_nodes: Vec<String>,
    /// /dev/fb0 exists.
    pub fb0: bool,
    /// /dev/dri/card0 exists.
    pub dri_card0: bool,
    pub connectors: Vec<Connector>,
    /// /sys/class/graphics/fb0/virtual_size, e.g. `1024,768`.
    pub fb0_size: Option<String>,
    /// The first /proc/interrupts line of a hibmc or bochs interrupt, spaces squeezed.
    pub irq: Option<String>,
}

/// One DRM connector from sysfs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connector {
    /// e.g. `card0-VGA-1`.
    pub name: String,
    /// `connected`, `disconnected` or `unknown`.
    pub status: String,
    /// The `modes` file's lines, preferred first.
    pub modes: Vec<String>,
}

impl Connector {
    /// `card0-VGA-1 connected`, as reports have always shown a connector.
    pub fn status_line(&self) -> String {
        format!("{} {}", self.name, self.status)
    }

    /// `card0-VGA-1 1024x768 800x600 ...`, as reports have always shown the modes.
    pub fn modes_line(&self) -> String {
        let mut line = self.name.clone();
        for m in &self.modes {
            line.push(' ');
            line.push_str(m);
        }
        line
    }
}

/// A client's (or command's) report: the fields the host judges by, typed; whatever else the
/// client wrote in its status file (frames, signals, ioctl_errors, mapping, readback, stdout,
/// timed_out, stacks, ...) in `details`, shown verbatim in reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientReport {
    pub id: String,
    pub pid: i32,
    /// `kms`, `fbdev`, `idle-open` or `exec`; absent if the status file was unreadable.
    #[serde(default)]
    pub kind: Option<String>,
    /// e.g. `ready`, `running`, `exited`, `failed`, `killed`, `died`, `hung`.
    #[serde(default)]
    pub state: Option<String>,
    /// The process (a command: any of its group) is still there.
    pub alive: bool,
    /// The process (a command: its whole group) is gone.
    pub exited: bool,
    pub exit_code: Option<i32>,
    /// e.g. `SIGTERM`.
    pub exit_signal: Option<String>,
    #[serde(flatten)]
    pub details: Map<String, Value>,
}

impl ClientReport {
    /// A string detail (`stdout`, `mapping`, ...).
    pub fn detail_str(&self, key: &str) -> Option<&str> {
        self.details.get(key).and_then(Value::as_str)
    }

    /// A counter in a detail object, e.g. `signals`/`SIGBUS`; 0 if absent.
    pub fn counter(&self, object: &str, key: &str) -> u64 {
        self.details
            .get(object)
            .and_then(|o| o.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }

    /// The whole report as one JSON object (for reports and observations).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Why a line did not decode.
#[derive(Debug)]
pub struct DecodeError(String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

/// The request line for `request` (without the newline).
pub fn encode_request(request: &Request) -> String {
    // A Request holds only strings, integers and unit variants: serialising cannot fail.
    let json = serde_json::to_string(request).unwrap_or_default();
    format!("{REQUEST_PREFIX}{json}")
}

/// Decodes the JSON of a request line (after [`REQUEST_PREFIX`]).
pub fn decode_request(json: &str) -> Result<Request, DecodeError> {
    serde_json::from_str(json.trim()).map_err(|e| DecodeError(format!("bad request: {e}")))
}

/// The reply line for `reply` (without the newline).
pub fn encode_reply(reply: &Reply) -> String {
    let json = serde_json::to_string(reply).unwrap_or_else(|e| {
        // Only a report's free-form details could fail (they are JSON values already).
        let fallback = Reply::Error(GuestError::Failed {
            message: format!("reply did not encode: {e}"),
        });
        serde_json::to_string(&fallback).unwrap_or_default()
    });
    format!("{REPLY_MARK}{json}")
}

/// Decodes a reply line (with or without its [`REPLY_MARK`]).
pub fn decode_reply(line: &str) -> Result<Reply, DecodeError> {
    let json = line.trim().trim_start_matches(REPLY_MARK);
    serde_json::from_str(json).map_err(|e| DecodeError(format!("bad reply {json:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> ClientReport {
        let mut details = Map::new();
        details.insert("frames".into(), Value::from(9));
        details.insert("signals".into(), serde_json::json!({ "SIGBUS": 2 }));
        details.insert("stdout".into(), Value::from("hi\n"));
        ClientReport {
            id: "c1".into(),
            pid: 42,
            kind: Some("kms".into()),
            state: Some("running".into()),
            alive: true,
            exited: false,
            exit_code: None,
            exit_signal: Some("SIGTERM".into()),
            details,
        }
    }

    fn every_request() -> Vec<Request> {
        vec![
            Request::Status,
            Request::CardStatus {
                vendor: 0x1234,
                device: 0x1111,
            },
            Request::ProbeModes {
                vendor: 0x19e5,
                device: 0x1711,
            },
            Request::IrqCount {
                name: "hibmc".into(),
            },
            Request::Peek {
                bdf: "0000:01:00.0".into(),
                bar: 2,
                offset: 0x400,
            },
            Request::SysfsWrite {
                path: "/sys/bus/pci/drivers/bochs-drm/unbind".into(),
                value: "0000:01:00.0".into(),
                timeout_ms: 30_000,
            },
            Request::ClientStart {
                id: "k".into(),
                kind: ClientKind::IdleOpen,
                device: "/dev/dri/card1".into(),
                wait: false,
            },
            Request::ClientReport { id: "k".into() },
            Request::ClientStop {
                id: "k".into(),
                timeout_ms: 10_000,
            },
            Request::ExecStart {
                id: "b".into(),
                cmd: "echo \"quoted\" -- \n newline; exit 3".into(),
            },
            Request::ExecRun {
                id: "r".into(),
                timeout_ms: 5000,
                cmd: "sleep 1".into(),
            },
        ]
    }

    fn every_reply() -> Vec<Reply> {
        vec![
            Reply::Status {
                kernel_release: "6.12.117+deb13-arm64".into(),
            },
            Reply::Card(CardStatus::default()),
            Reply::Card(CardStatus {
                present: true,
                pci_address: Some("0000:01:00.0".into()),
                parent_id: Some("0x1b36:0x000c".into()),
                drm: vec!["card0".into()],
                dri_nodes: vec!["card0".into(), "renderD128".into()],
                fb0: true,
                connectors: vec![Connector {
                    name: "card0-VGA-1".into(),
                    status: "connected".into(),
                    modes: vec!["1024x768".into(), "800x600".into()],
                }],
                ..CardStatus::default()
            }),
            Reply::Connectors(vec![]),
            Reply::IrqCount(u64::MAX),
            Reply::Peek(0xffff_ffff),
            Reply::Done,
            Reply::Started {
                id: "c1".into(),
                pid: 7,
                report: Some(report()),
            },
            Reply::Started {
                id: "b".into(),
                pid: 8,
                report: None,
            },
            Reply::Client(report()),
            Reply::Error(GuestError::Timeout {
                what: "write /sys/bus/pci/rescan".into(),
                waited_ms: 30_000,
            }),
            Reply::Error(GuestError::Failed {
                message: "No such device".into(),
            }),
            Reply::Error(GuestError::ClientFailed {
                message: "exited before it was ready".into(),
                report: Some(Box::new(report())),
            }),
            Reply::Error(GuestError::NoClient { id: "ghost".into() }),
            Reply::Error(GuestError::BadRequest {
                message: "unknown variant".into(),
            }),
        ]
    }

    #[test]
    fn every_request_round_trips() {
        for r in every_request() {
            let line = encode_request(&r);
            assert!(!line.contains('\n'), "{line}");
            let json = line.strip_prefix(REQUEST_PREFIX).unwrap_or_default();
            assert_eq!(decode_request(json).ok(), Some(r.clone()), "{line}");
        }
    }

    #[test]
    fn every_reply_round_trips() {
        for r in every_reply() {
            let line = encode_reply(&r);
            assert!(
                line.starts_with(REPLY_MARK) && !line.contains('\n'),
                "{line}"
            );
            assert_eq!(decode_reply(&line).ok(), Some(r.clone()), "{line}");
        }
    }

    #[test]
    fn a_truncated_reply_is_an_error() {
        let line = encode_reply(&Reply::Card(CardStatus {
            present: true,
            ..CardStatus::default()
        }));
        for cut in [1, line.len() / 2, line.len() - 1] {
            assert!(decode_reply(&line[..cut]).is_err(), "{:?}", &line[..cut]);
        }
        let req = encode_request(&Request::IrqCount { name: "x".into() });
        let json = &req[REQUEST_PREFIX.len()..];
        assert!(decode_request(&json[..json.len() - 1]).is_err());
    }

    #[test]
    fn an_unknown_variant_is_an_error() {
        let e = decode_request(r#"{"op":"format-disk"}"#)
            .map(|_| ())
            .unwrap_err();
        assert!(e.to_string().contains("format-disk"), "{e}");
        assert!(decode_request(r#"{"op":"peek","bdf":"x","bar":"two","offset":0}"#).is_err());
        assert!(decode_reply("\u{1e}{\"reply\":\"teapot\"}").is_err());
        assert!(decode_reply(r#"{"reply":"error","body":{"error":"meltdown"}}"#).is_err());
        assert!(decode_request(
            r#"{"op":"client-start","id":"a","kind":"gl","device":"/dev/x","wait":true}"#
        )
        .is_err());
    }

    #[test]
    fn wire_names_are_stable() {
        // The agent is built with the host, but these names appear in logs and docs.
        assert_eq!(
            encode_request(&Request::ClientStop {
                id: "c".into(),
                timeout_ms: 5
            }),
            r#"@req {"op":"client-stop","id":"c","timeout_ms":5}"#
        );
        assert_eq!(encode_reply(&Reply::Done), "\u{1e}{\"reply\":\"done\"}");
        assert_eq!(
            encode_reply(&Reply::Error(GuestError::NoClient { id: "g".into() })),
            "\u{1e}{\"reply\":\"error\",\"body\":{\"error\":\"no-client\",\"id\":\"g\"}}"
        );
    }

    #[test]
    fn client_kinds_parse_print_and_serialise_by_one_name() {
        for kind in ClientKind::ALL {
            assert_eq!(kind.name().parse::<ClientKind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.name());
            assert_eq!(
                serde_json::to_value(kind).ok(),
                Some(Value::from(kind.name()))
            );
        }
        assert_eq!(
            "gl".parse::<ClientKind>(),
            Err("unknown client 'gl' (expected kms, fbdev or idle-open)".to_string())
        );
        // Names are exact: no case folding, no surrounding space.
        assert!("KMS".parse::<ClientKind>().is_err());
        assert!(" kms".parse::<ClientKind>().is_err());
        assert!("".parse::<ClientKind>().is_err());
        assert_eq!(ClientKind::Kms.default_device(), "/dev/dri/card0");
        assert_eq!(ClientKind::IdleOpen.default_device(), "/dev/dri/card0");
        assert_eq!(ClientKind::Fbdev.default_device(), "/dev/fb0");
    }

    #[test]
    fn report_details_flatten_and_helpers_read_them() {
        let r = report();
        let v = r.to_value();
        assert_eq!(v["frames"], 9);
        assert_eq!(v["exit_code"], Value::Null);
        assert_eq!(r.counter("signals", "SIGBUS"), 2);
        assert_eq!(r.counter("signals", "SIGSEGV"), 0);
        assert_eq!(r.detail_str("stdout"), Some("hi\n"));
        // A report without kind/state (status file unreadable) still decodes.
        let bare: ClientReport = serde_json::from_str(
            r#"{"status_file":"unreadable: gone","id":"c","pid":1,"alive":false,"exited":true,"exit_code":null,"exit_signal":"SIGBUS"}"#,
        )
        .unwrap_or_default();
        assert_eq!(bare.exit_signal.as_deref(), Some("SIGBUS"));
        assert_eq!(bare.detail_str("status_file"), Some("unreadable: gone"));
        let c = Connector {
            name: "card0-VGA-1".into(),
            status: "connected".into(),
            modes: vec![],
        };
        assert_eq!(c.modes_line(), "card0-VGA-1");
        assert_eq!(c.status_line(), "card0-VGA-1 connected");
    }
}
