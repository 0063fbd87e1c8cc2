//! `vanish-agent serve`: the guest end of the host's line protocol.
//!
//! The runner speaks only the typed protocol (crate `guest_protocol`, one place for what the
//! guest can be asked): a line `@req JSON` is answered by one line `\x1e JSON-reply`
//! ([`Clients::request`]). The text verbs and shell lines below remain for people at the
//! guest's port and for this agent's own tests; the runner does not use them.
//!
//! The host writes one command per line. A line not starting with '@' runs as `/bin/sh -c LINE`
//! with stdin /dev/null and stdout and stderr both sent back; then the agent writes
//! `"\x1e<status>\n"` (the exit code, or 128 + the signal number). Lines starting with '@' are
//! built-in verbs answered the same way (output, then the status line):
//!
//! - `@ping` -> `pong`
//! - `@client start ID KIND [DEVICE]` -> `started ID pid=N` and the client's status JSON once it
//!   is ready (status 0), or an `error: ...` line (status 1)
//! - `@client report ID` -> the status JSON with the agent's view merged in (status 0)
//! - `@client stop ID [TIMEOUT_MS]` -> SIGTERM, wait, final status JSON (status 0 if the client
//!   exited, 1 if it is still there: `"state":"hung"` plus its /proc state, wchan and stack)
//! - `@exec start ID -- CMD` -> runs `sh -c CMD` in its own process group as client ID
//!   (stdout/stderr captured, 64 KiB each): `started ID pid=N` (status 0). `@client report ID`
//!   and `@client stop ID [TIMEOUT_MS]` work for it; stop sends SIGTERM to the group, SIGKILL
//!   after a grace (2 s or half the timeout), and reports `"state":"hung"` with every member's
//!   /proc stack if the group is still there at the timeout
//! - `@exec run ID TIMEOUT_MS -- CMD` -> the same in the foreground: waits for the group to end
//!   and prints its report JSON (status 0); after TIMEOUT_MS it is stopped as above and the
//!   report has `"timed_out":true`
//! - `@shell [ROWS COLS]` -> an interactive `sh -i` on a pty, relayed raw until it exits
//!   (see `shell.rs`); no status line
//! - anything else -> `error: ...` (status 2)
//!
//! A virtio-serial port reads as end-of-file while the host side is not connected: until the
//! first line arrives the agent keeps waiting for the host; end-of-file after that means the host
//! went away, and `main` (as PID 1) powers the guest off like the old shell loop did.
//!
//! If a command's output does not end with a newline, the agent adds one before the status line
//! so the status line always starts a line. Output that background jobs write after their
//! command returned is still forwarded (as with the old shell loop), unframed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::client::Kind;
use crate::exec::{group_members, kill_group, Exec};
use crate::json::Object;
use crate::sys::{errno, signal_name};
use guest_protocol::{self as protocol, Request};

/// Starts each status line.
pub const END: u8 = 0x1e;
/// How long `@client start` waits for the client to be ready.
pub const START_WAIT: Duration = Duration::from_secs(5);
/// `@client stop`'s default wait.
pub const STOP_WAIT_MS: u64 = 5000;
const POLL: Duration = Duration::from_millis(10);

/// Where things live; tests point these elsewhere.
#[derive(Clone, Debug)]
pub struct Config {
    /// The binary started as `EXE client KIND ...`.
    pub agent_exe: PathBuf,
    /// Status files go to `DIR/vanish-client-ID.json`, client stderr to `DIR/vanish-client-ID.log`.
    pub status_dir: PathBuf,
    pub shell: PathBuf,
    /// Reap every exited child, not only our clients: right for PID 1, which inherits orphans,
    /// and wrong in a process with other children (tests), whose statuses it would steal.
    pub reap_orphans: bool,
    /// Treat end-of-input before the first line as "host not connected yet" and retry: a
    /// virtio-serial port reads as EOF until the host side opens its chardev.
    pub wait_for_host: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            agent_exe: std::env::current_exe()
                .unwrap_or_else(|_| PathBuf::from("/bin/vanish-agent")),
            status_dir: PathBuf::from("/tmp"),
            shell: PathBuf::from("/bin/sh"),
            reap_orphans: false,
            wait_for_host: false,
        }
    }
}

/// A parsed built-in verb (the line without its '@').
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verb {
    Ping,
    ClientStart {
        id: String,
        kind: Kind,
        device: String,
        /// Wait until the client is ready (false: reply as soon as it runs, e.g. to remove
        /// the card in the middle of its first modeset).
        wait: bool,
    },
    ClientReport {
        id: String,
    },
    ClientStop {
        id: String,
        timeout_ms: u64,
    },
    ExecStart {
        id: String,
        cmd: String,
    },
    ExecRun {
        id: String,
        timeout_ms: u64,
        cmd: String,
    },
}

/// `exec start ID -- CMD` and `exec run ID TIMEOUT_MS -- CMD`.
fn parse_exec(rest: &str) -> Result<Verb, String> {
    let usage = "usage: @exec start ID -- CMD | @exec run ID TIMEOUT_MS -- CMD";
    let (head, cmd) = rest.split_once(" -- ").ok_or(usage)?;
    if cmd.trim().is_empty() {
        return Err(usage.to_string());
    }
    let cmd = cmd.to_string();
    match head.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["start", id] => Ok(Verb::ExecStart {
            id: valid_id(id)?,
            cmd,
        }),
        ["run", id, ms] => Ok(Verb::ExecRun {
            id: valid_id(id)?,
            timeout_ms: ms
                .parse()
                .map_err(|_| format!("bad timeout {ms:?} (milliseconds)"))?,
            cmd,
        }),
        _ => Err(usage.to_string()),
    }
}

fn valid_id(id: &str) -> Result<String, String> {
    if !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && id != "."
        && id != ".."
    {
        Ok(id.to_string())
    } else {
        Err(format!("bad client id {id:?} (use 1-64 of A-Za-z0-9._-)"))
    }
}

/// Parses `ping`, `client start ...` and so on.
pub fn parse_verb(line: &str) -> Result<Verb, String> {
    if let Some(rest) = line.trim_start().strip_prefix("exec") {
        if rest.is_empty() || rest.starts_with(' ') {
            return parse_exec(rest);
        }
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let usage =
        "usage: @client start ID KIND [DEVICE] | @client report ID | @client stop ID [TIMEOUT_MS]";
    match words.as_slice() {
        ["ping"] => Ok(Verb::Ping),
        ["client", "start", id, kind, rest @ ..] => {
            let kind = Kind::parse(kind)
                .ok_or_else(|| format!("unknown client kind {kind:?} (kms, fbdev, idle-open)"))?;
            let wait = !rest.contains(&"nowait");
            let devices: Vec<&&str> = rest.iter().filter(|w| **w != "nowait").collect();
            if devices.len() > 1 {
                return Err(usage.to_string());
            }
            let device = devices
                .first()
                .map_or(kind.default_device(), |d| **d)
                .to_string();
            Ok(Verb::ClientStart {
                id: valid_id(id)?,
                kind,
                device,
                wait,
            })
        }
        ["client", "report", id] => Ok(Verb::ClientReport { id: valid_id(id)? }),
        ["client", "stop", id, rest @ ..] if rest.len() <= 1 => {
            let timeout_ms = match rest.first() {
                Some(t) => t
                    .parse()
                    .map_err(|_| format!("bad timeout {t:?} (milliseconds)"))?,
                None => STOP_WAIT_MS,
            };
            Ok(Verb::ClientStop {
                id: valid_id(id)?,
                timeout_ms,
            })
        }
        ["client", ..] => Err(usage.to_string()),
        [] => Err("empty verb".to_string()),
        [verb, ..] => Err(format!("unknown verb @{verb}")),
    }
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    fn from_wait_status(st: libc::c_int) -> Exit {
        if libc::WIFSIGNALED(st) {
            Exit::Signal(libc::WTERMSIG(st))
        } else {
            Exit::Code(libc::WEXITSTATUS(st))
        }
    }
}

struct ClientProc {
    pid: i32,
    status_path: PathBuf,
    exit: Option<Exit>,
    /// A user command (`@exec`), not one of our clients.
    exec: Option<Exec>,
}

/// The clients this agent started, by id.
pub struct Clients {
    cfg: Config,
    procs: BTreeMap<String, ClientProc>,
}

/// What starting a client came to: its pid once it runs, its report if the agent waited for
/// it, and why it failed if it did.
struct Started {
    pid: Option<i32>,
    report: Option<Object>,
    error: Option<String>,
}

/// A verb's answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub text: String,
    pub status: i32,
}

fn reply(status: i32, text: impl Into<String>) -> Reply {
    Reply {
        text: text.into(),
        status,
    }
}

impl Clients {
    pub fn new(cfg: Config) -> Clients {
        Clients {
            cfg,
            procs: BTreeMap::new(),
        }
    }

    /// Notes which clients have exited; with `reap_orphans`, reaps every other exited child too.
    pub fn reap(&mut self) {
        for c in self.procs.values_mut().filter(|c| c.exit.is_none()) {
            let mut st = 0;
            // SAFETY: waitpid with a valid status pointer.
            if unsafe { libc::waitpid(c.pid, &mut st, libc::WNOHANG) } == c.pid {
                c.exit = Some(Exit::from_wait_status(st));
            }
        }
        while self.cfg.reap_orphans {
            let mut st = 0;
            // SAFETY: as above. Our clients were all collected by the loop above, except any
            // that exited since: catch those here.
            let pid = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if let Some(c) = self
                .procs
                .values_mut()
                .find(|c| c.pid == pid && c.exit.is_none())
            {
                c.exit = Some(Exit::from_wait_status(st));
            }
        }
    }

    /// Answers one request of the typed protocol (`@req JSON`).
    pub fn request(&mut self, request: Request) -> protocol::Reply {
        use protocol::{GuestError, Reply as R};
        let as_report = |o: Object| -> R {
            match serde_json::from_value::<protocol::ClientReport>(o.to_value()) {
                Ok(r) => R::Client(r),
                Err(e) => R::Error(GuestError::Failed {
                    message: format!("client report {}: {e}", o.to_json()),
                }),
            }
        };
        let bad = |message: String| R::Error(GuestError::BadRequest { message });
        let root = crate::inspect::Root::default();
        match request {
            Request::Status => R::Status {
                kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            },
            Request::CardStatus { vendor, device } => R::Card(root.card_status(vendor, device)),
            Request::ProbeModes { vendor, device } => {
                R::Connectors(root.probe_modes(vendor, device))
            }
            Request::IrqCount { name } => match root.irq_count(&name) {
                Ok(n) => R::IrqCount(n),
                Err(e) => R::Error(e),
            },
            Request::Peek { bdf, bar, offset } => match self.peek(&bdf, bar, offset) {
                Ok(v) => R::Peek(v),
                Err(message) => R::Error(GuestError::Failed { message }),
            },
            Request::SysfsWrite {
                path,
                value,
                timeout_ms,
            } => {
                match crate::inspect::sysfs_write(&path, &value, Duration::from_millis(timeout_ms))
                {
                    Ok(()) => R::Done,
                    Err(e) => R::Error(e),
                }
            }
            Request::ClientStart {
                id,
                kind,
                device,
                wait,
            } => {
                let id = match valid_id(&id) {
                    Ok(id) => id,
                    Err(e) => return bad(e),
                };
                let kind = match kind {
                    protocol::ClientKind::Kms => Kind::Kms,
                    protocol::ClientKind::Fbdev => Kind::Fbdev,
                    protocol::ClientKind::IdleOpen => Kind::IdleOpen,
                };
                let started = self.start_client(&id, kind, &device, wait);
                let report = match started.report.map(as_report) {
                    Some(R::Client(r)) => Some(r),
                    Some(other) => return other,
                    None => None,
                };
                match (started.pid, started.error) {
                    (Some(pid), None) => R::Started { id, pid, report },
                    (_, error) => R::Error(GuestError::ClientFailed {
                        message: error.unwrap_or_default(),
                        report: report.map(Box::new),
                    }),
                }
            }
            Request::ClientReport { id } => match self.procs.get(&id) {
                Some(c) => as_report(report(&id, c)),
                None => R::Error(GuestError::NoClient { id }),
            },
            Request::ClientStop { id, timeout_ms } => match self.procs.contains_key(&id) {
                false => R::Error(GuestError::NoClient { id }),
                true => match self.stop_client(&id, timeout_ms) {
                    Ok((o, _hung)) => as_report(o),
                    Err(message) => R::Error(GuestError::Failed { message }),
                },
            },
            Request::ExecStart { id, cmd } => {
                let id = match valid_id(&id) {
                    Ok(id) => id,
                    Err(e) => return bad(e),
                };
                match self.exec_start(&id, &cmd) {
                    Ok(pid) => R::Started {
                        id,
                        pid,
                        report: None,
                    },
                    Err(e) => R::Error(GuestError::Failed {
                        message: e.trim_start_matches("error: ").to_string(),
                    }),
                }
            }
            Request::ExecRun {
                id,
                timeout_ms,
                cmd,
            } => {
                let id = match valid_id(&id) {
                    Ok(id) => id,
                    Err(e) => return bad(e),
                };
                match self.run_command(&id, timeout_ms, &cmd) {
                    Ok(o) => as_report(o),
                    Err(e) => R::Error(GuestError::Failed {
                        message: e.trim_start_matches("error: ").to_string(),
                    }),
                }
            }
        }
    }

    /// One BAR read in a child process (`vanish-agent peek`): a read that faults (SIGBUS on a
    /// vanished mapping) must kill that child, not the agent, which is PID 1 in the guest.
    fn peek(&self, bdf: &str, bar: u8, offset: u64) -> Result<u32, String> {
        let out = Command::new(&self.cfg.agent_exe)
            .args(["peek", bdf, &bar.to_string(), &format!("{offset:#x}")])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.cfg.agent_exe.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "peek {bdf} BAR{bar} +{offset:#x} failed ({}): {}",
                out.status,
                err.trim()
            ));
        }
        crate::peek::parse_number(text.trim())
            .ok()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| format!("peek printed {:?}", text.trim()))
    }

    pub fn handle(&mut self, verb: Verb) -> Reply {
        match verb {
            Verb::Ping => reply(0, "pong"),
            Verb::ClientStart {
                id,
                kind,
                device,
                wait,
            } => self.start(&id, kind, &device, wait),
            Verb::ClientReport { id } => match self.procs.get(&id) {
                Some(c) => reply(0, report(&id, c).to_json()),
                None => reply(1, format!("error: no client {id}")),
            },
            Verb::ClientStop { id, timeout_ms } => self.stop(&id, timeout_ms),
            Verb::ExecStart { id, cmd } => match self.exec_start(&id, &cmd) {
                Ok(pid) => reply(0, format!("started {id} pid={pid}")),
                Err(e) => reply(1, e),
            },
            Verb::ExecRun {
                id,
                timeout_ms,
                cmd,
            } => self.exec_run(&id, timeout_ms, &cmd),
        }
    }

    fn exec_start(&mut self, id: &str, cmd: &str) -> Result<i32, String> {
        self.reap();
        if let Some(c) = self.procs.get(id).filter(|c| c.exit.is_none()) {
            return Err(format!(
                "error: client {id} is already running (pid={})",
                c.pid
            ));
        }
        let (child, exec) = Exec::spawn(&self.cfg.shell, cmd)
            .map_err(|e| format!("error: cannot run {}: {e}", self.cfg.shell.display()))?;
        let pid = child.id() as i32;
        self.procs.insert(
            id.to_string(),
            ClientProc {
                pid,
                status_path: PathBuf::new(),
                exit: None,
                exec: Some(exec),
            },
        );
        Ok(pid)
    }

    /// Whether client `id`'s process (and, for a command, its whole group) is gone.
    fn ended(&mut self, id: &str) -> bool {
        self.reap();
        self.procs.get(id).is_none_or(|c| {
            c.exit.is_some() && (c.exec.is_none() || group_members(c.pid).is_empty())
        })
    }

    /// Waits a little for a finished command's output to reach end-of-file.
    fn drain(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_millis(500);
        while let Some(e) = self.procs.get(id).and_then(|c| c.exec.as_ref()) {
            if e.drained() || Instant::now() >= deadline {
                break;
            }
            thread::sleep(POLL);
        }
    }

    fn exec_run(&mut self, id: &str, timeout_ms: u64, cmd: &str) -> Reply {
        match self.run_command(id, timeout_ms, cmd) {
            Ok(o) => reply(0, o.to_json()),
            Err(e) => reply(1, e),
        }
    }

    /// Runs a command to its end (or stops it at `timeout_ms`): its report.
    fn run_command(&mut self, id: &str, timeout_ms: u64, cmd: &str) -> Result<Object, String> {
        self.exec_start(id, cmd)?;
        let started = Instant::now();
        let deadline = started + Duration::from_millis(timeout_ms);
        let mut o = loop {
            if self.ended(id) {
                self.drain(id);
                let Some(c) = self.procs.get(id) else {
                    return Err(format!("error: no client {id}"));
                };
                let mut o = report(id, c);
                o.bool("timed_out", false);
                break o;
            }
            if Instant::now() >= deadline {
                let (mut o, _) = self.stop_exec(id, 5000);
                o.bool("timed_out", true);
                break o;
            }
            thread::sleep(POLL);
        };
        o.num("timeout_ms", timeout_ms)
            .num("elapsed_ms", started.elapsed().as_millis());
        self.procs.remove(id);
        Ok(o)
    }

    /// SIGTERM to the command's process group, SIGKILL after a grace; the report, and whether
    /// the group was still there after `timeout_ms` (hung).
    fn stop_exec(&mut self, id: &str, timeout_ms: u64) -> (Object, bool) {
        let Some(pid) = self.procs.get(id).map(|c| c.pid) else {
            let mut o = Object::new();
            o.str("error", &format!("no client {id}"));
            return (o, false);
        };
        let start = Instant::now();
        let grace = Duration::from_millis((timeout_ms / 2).min(2000));
        let deadline = start + Duration::from_millis(timeout_ms);
        if !self.ended(id) {
            kill_group(pid, libc::SIGTERM);
        }
        let mut killed = false;
        loop {
            if self.ended(id) {
                self.drain(id);
                let Some(c) = self.procs.get(id) else {
                    return (Object::new(), false);
                };
                let mut o = report(id, c);
                o.bool("sigkilled", killed);
                return (o, false);
            }
            if !killed && Instant::now() >= start + grace {
                kill_group(pid, libc::SIGKILL);
                killed = true;
            }
            if Instant::now() >= deadline {
                let Some(c) = self.procs.get(id) else {
                    return (Object::new(), false);
                };
                let mut o = report(id, c);
                o.str("state", "hung").bool("sigkilled", killed);
                let members = group_members(pid);
                let main = members.first().copied().unwrap_or(pid);
                for (key, file) in [
                    ("proc_state", "stat"),
                    ("wchan", "wchan"),
                    ("stack", "stack"),
                ] {
                    o.opt_str(key, proc_file(main, file).as_deref());
                }
                let all: Vec<String> = members
                    .iter()
                    .map(|m| {
                        format!(
                            "{m} {} {}\n{}",
                            proc_file(*m, "comm").unwrap_or_default(),
                            proc_file(*m, "stat").unwrap_or_default(),
                            proc_file(*m, "stack").unwrap_or_default()
                        )
                    })
                    .collect();
                o.str("group_stacks", &all.join("\n"));
                o.num("waited_ms", timeout_ms);
                return (o, true);
            }
            thread::sleep(POLL);
        }
    }

    fn start(&mut self, id: &str, kind: Kind, device: &str, wait: bool) -> Reply {
        let o = self.start_client(id, kind, device, wait);
        let mut lines = Vec::new();
        if let Some(pid) = o.pid {
            lines.push(format!("started {id} pid={pid}"));
        }
        if let Some(r) = &o.report {
            lines.push(r.to_json());
        }
        if let Some(e) = &o.error {
            lines.push(format!("error: {e}"));
        }
        reply(i32::from(o.error.is_some()), lines.join("\n"))
    }

    /// Starts client `id`; with `wait`, waits until it is ready (or failed).
    fn start_client(&mut self, id: &str, kind: Kind, device: &str, wait: bool) -> Started {
        let failed = |error: String| Started {
            pid: None,
            report: None,
            error: Some(error),
        };
        self.reap();
        if let Some(c) = self.procs.get(id).filter(|c| c.exit.is_none()) {
            return failed(format!("client {id} is already running (pid={})", c.pid));
        }
        let status_path = self.cfg.status_dir.join(format!("vanish-client-{id}.json"));
        let log_path = self.cfg.status_dir.join(format!("vanish-client-{id}.log"));
        let _ = std::fs::remove_file(&status_path);
        let log = match File::create(&log_path).and_then(|f| Ok((f.try_clone()?, f))) {
            Ok(pair) => pair,
            Err(e) => return failed(format!("cannot create {}: {e}", log_path.display())),
        };
        let spawned = Command::new(&self.cfg.agent_exe)
            .args(["client", kind.name(), "--device", device, "--status"])
            .arg(&status_path)
            .stdin(Stdio::null())
            .stdout(log.0)
            .stderr(log.1)
            .process_group(0)
            .spawn();
        let pid = match spawned {
            Ok(child) => child.id() as i32,
            Err(e) => {
                return failed(format!(
                    "cannot start {}: {e}",
                    self.cfg.agent_exe.display()
                ))
            }
        };
        self.procs.insert(
            id.to_string(),
            ClientProc {
                pid,
                status_path,
                exit: None,
                exec: None,
            },
        );

        if !wait {
            return Started {
                pid: Some(pid),
                report: None,
                error: None,
            };
        }
        let deadline = Instant::now() + START_WAIT;
        let (status, verdict) = loop {
            self.reap();
            let Some(c) = self.procs.get(id) else {
                break (1, "error: client vanished from the table".to_string());
            };
            let state = read_status(&c.status_path)
                .ok()
                .and_then(|o| o.get_str("state"));
            match (state.as_deref(), c.exit) {
                (Some("ready" | "running"), _) => break (0, String::new()),
                // A failed client writes its state, then exits: wait for the exit, so that the
                // report that follows has the exit code.
                (Some("failed"), None) if Instant::now() < deadline => thread::sleep(POLL),
                (Some("failed"), _) => break (1, "failed".to_string()),
                (_, Some(exit)) => {
                    break (
                        1,
                        format!("exited before it was ready ({})", exit_text(exit)),
                    )
                }
                _ if Instant::now() >= deadline => {
                    break (
                        1,
                        format!(
                            "not ready within {} ms (state={})",
                            START_WAIT.as_millis(),
                            state.as_deref().unwrap_or("none")
                        ),
                    )
                }
                _ => thread::sleep(POLL),
            }
        };
        let Some(c) = self.procs.get(id) else {
            return Started {
                pid: Some(pid),
                report: None,
                error: Some(verdict.trim_start_matches("error: ").to_string()),
            };
        };
        let report = report(id, c);
        let error = (status != 0).then(|| {
            let why = report.get_str("last_error").unwrap_or_default();
            format!(
                "client {id} {verdict}{}",
                if why.is_empty() {
                    String::new()
                } else {
                    format!(": {why}")
                }
            )
        });
        Started {
            pid: Some(pid),
            report: Some(report),
            error,
        }
    }

    fn stop(&mut self, id: &str, timeout_ms: u64) -> Reply {
        match self.stop_client(id, timeout_ms) {
            Ok((o, hung)) => reply(i32::from(hung), o.to_json()),
            Err(e) => reply(1, format!("error: {e}")),
        }
    }

    /// Stops client `id`: its final report, and whether it is still there (hung).
    fn stop_client(&mut self, id: &str, timeout_ms: u64) -> Result<(Object, bool), String> {
        self.reap();
        let Some(c) = self.procs.get(id) else {
            return Err(format!("no client {id}"));
        };
        let pid = c.pid;
        if c.exec.is_some() {
            return Ok(self.stop_exec(id, timeout_ms));
        }
        if c.exit.is_none() {
            // SAFETY: plain kill(2); the pid is our unreaped child, so it cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            self.reap();
            let Some(c) = self.procs.get(id) else {
                return Err(format!("no client {id}"));
            };
            if c.exit.is_some() {
                return Ok((report(id, c), false));
            }
            if Instant::now() >= deadline {
                let mut o = report(id, c);
                o.str("state", "hung");
                for (key, file) in [
                    ("proc_state", "stat"),
                    ("wchan", "wchan"),
                    ("stack", "stack"),
                ] {
                    o.opt_str(key, proc_file(pid, file).as_deref());
                }
                o.num("waited_ms", timeout_ms);
                return Ok((o, true));
            }
            thread::sleep(POLL);
        }
    }
}

fn read_status(path: &std::path::Path) -> Result<Object, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    Object::parse(&text)
}

fn exit_text(exit: Exit) -> String {
    match exit {
        Exit::Code(c) => format!("exit code {c}"),
        Exit::Signal(s) => format!("killed by {}", signal_name(s)),
    }
}

/// The client's status file with the agent's knowledge merged in: `id`, `alive`, `exited` (the
/// process is gone), `exit_code`, `exit_signal`; `state` becomes "killed" or "died" if the
/// process ended without writing its final state.
fn report(id: &str, c: &ClientProc) -> Object {
    if let Some(e) = &c.exec {
        return exec_report(id, c, e);
    }
    let mut o = match read_status(&c.status_path) {
        Ok(o) => o,
        Err(e) => {
            let mut o = Object::new();
            o.str("status_file", &format!("unreadable: {e}"));
            o
        }
    };
    o.str("id", id)
        .num("pid", c.pid)
        .bool("alive", c.exit.is_none())
        .bool("exited", c.exit.is_some());
    match c.exit {
        Some(Exit::Code(code)) => o.num("exit_code", code).raw("exit_signal", "null"),
        Some(Exit::Signal(sig)) => o
            .raw("exit_code", "null")
            .str("exit_signal", &signal_name(sig)),
        None => o.raw("exit_code", "null").raw("exit_signal", "null"),
    };
    let state = o.get_str("state");
    if let Some(exit) = c.exit {
        if !matches!(state.as_deref(), Some("exited" | "failed")) {
            o.str(
                "state",
                if matches!(exit, Exit::Signal(_)) {
                    "killed"
                } else {
                    "died"
                },
            );
        }
    }
    o
}

/// A command's report: `kind` "exec", `state` running, exited (with `exit_code`) or killed
/// (with `exit_signal`), `alive`/`exited` for the whole process group, and its output.
fn exec_report(id: &str, c: &ClientProc, e: &Exec) -> Object {
    let mut o = Object::new();
    let alive = c.exit.is_none() || !group_members(c.pid).is_empty();
    o.str("kind", "exec")
        .str("id", id)
        .num("pid", c.pid)
        .str("cmd", &e.cmd)
        .str(
            "state",
            match c.exit {
                _ if alive => "running",
                Some(Exit::Signal(_)) => "killed",
                _ => "exited",
            },
        )
        .bool("alive", alive)
        .bool("exited", !alive);
    match c.exit {
        Some(Exit::Code(code)) => o.num("exit_code", code).raw("exit_signal", "null"),
        Some(Exit::Signal(sig)) => o
            .raw("exit_code", "null")
            .str("exit_signal", &signal_name(sig)),
        None => o.raw("exit_code", "null").raw("exit_signal", "null"),
    };
    e.output_into(&mut o);
    o
}

/// /proc/PID/FILE, trimmed; for `stat`, just the state letter and name, e.g. "D (disk sleep)".
fn proc_file(pid: i32, file: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    if file == "stat" {
        // "pid (comm) S ...": the state follows the last ')'.
        let state = text
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .next()?
            .to_string();
        let name = match state.as_str() {
            "R" => "running",
            "S" => "sleeping",
            "D" => "disk sleep",
            "Z" => "zombie",
            "T" => "stopped",
            "t" => "tracing stop",
            "X" => "dead",
            "I" => "idle",
            _ => "?",
        };
        return Some(format!("{state} ({name})"));
    }
    Some(text.trim_end().to_string())
}

/// Writes `bytes` to the shared output.
fn send<W: Write>(out: &Mutex<W>, bytes: &[u8]) -> io::Result<()> {
    let mut w = out.lock().unwrap_or_else(|p| p.into_inner());
    w.write_all(bytes)?;
    w.flush()
}

/// Writes the status line, first ending an unterminated last line.
fn finish<W: Write>(out: &Mutex<W>, last: Option<u8>, status: i32) -> io::Result<()> {
    let nl = if matches!(last, Some(b) if b != b'\n') {
        "\n"
    } else {
        ""
    };
    send(out, format!("{nl}{}{status}\n", END as char).as_bytes())
}

fn set_nonblocking(fd: &impl AsRawFd, on: bool) {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            let flags = if on {
                flags | libc::O_NONBLOCK
            } else {
                flags & !libc::O_NONBLOCK
            };
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags);
        }
    }
}

/// Waits up to `ms` for `fd` to be readable (or hung up).
fn wait_readable(fd: &impl AsFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    r > 0
}

/// Runs one shell line, forwarding its output; returns its status.
fn run_shell<W: Write + Send + 'static>(
    cfg: &Config,
    line: &str,
    out: &Arc<Mutex<W>>,
) -> io::Result<()> {
    let (mut rd, wr) = io::pipe()?;
    let spawned = Command::new(&cfg.shell)
        .arg("-c")
        .arg(line)
        .stdin(Stdio::null())
        .stdout(wr.try_clone()?)
        .stderr(wr)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            send(
                out,
                format!("vanish-agent: cannot run {}: {e}\n", cfg.shell.display()).as_bytes(),
            )?;
            return finish(out, Some(b'\n'), 127);
        }
    };
    let mut last = None;
    let mut buf = vec![0u8; 16384];
    let mut forward =
        |rd: &mut io::PipeReader, last: &mut Option<u8>| -> io::Result<Option<usize>> {
            match rd.read(&mut buf) {
                Ok(0) => Ok(Some(0)),
                Ok(n) => {
                    *last = Some(buf[n - 1]);
                    send(out, &buf[..n])?;
                    Ok(Some(n))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Some(0)),
                Err(e) => Err(e),
            }
        };
    // Forward until every writer is gone, or the shell exits while a background job still
    // holds the pipe.
    let mut eof = false;
    let status = loop {
        if !eof && wait_readable(&rd, 20) && forward(&mut rd, &mut last)? == Some(0) {
            eof = true;
        }
        let done = if eof {
            Some(child.wait()?)
        } else {
            child.try_wait()?
        };
        if let Some(st) = done {
            break st;
        }
    };
    if !eof {
        // Drain what the shell wrote before it exited, then leave the rest to a thread.
        set_nonblocking(&rd, true);
        while let Some(n) = forward(&mut rd, &mut last)? {
            if n == 0 {
                break;
            }
        }
        set_nonblocking(&rd, false);
        let out = Arc::clone(out);
        thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = rd.read(&mut buf) {
                if n == 0 || send(&out, &buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 255,
    };
    finish(out, last, code)
}

/// Serves the protocol until `input` ends (Ok) or fails.
pub fn serve<R: Read, W: Write + Send + 'static>(
    input: R,
    output: W,
    cfg: Config,
) -> io::Result<()> {
    let out = Arc::new(Mutex::new(output));
    let mut input = BufReader::new(input);
    let mut clients = Clients::new(cfg.clone());
    let mut lines = 0u64;
    loop {
        let mut buf = Vec::new();
        match input.read_until(b'\n', &mut buf) {
            Ok(0) if lines == 0 && cfg.wait_for_host => {
                thread::sleep(Duration::from_millis(100));
                continue;
            }
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        // Like the old `while read -r line` loop: an unterminated last line is not run.
        let Some(line) = buf.strip_suffix(b"\n") else {
            return Ok(());
        };
        lines += 1;
        let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line)).into_owned();
        clients.reap();
        if let Some(json) = line.strip_prefix(protocol::REQUEST_PREFIX) {
            let answer = match protocol::decode_request(json) {
                Ok(request) => clients.request(request),
                Err(e) => protocol::Reply::Error(protocol::GuestError::BadRequest {
                    message: e.to_string(),
                }),
            };
            send(
                &out,
                format!("{}\n", protocol::encode_reply(&answer)).as_bytes(),
            )?;
        } else if let Some(verb) = line.strip_prefix('@') {
            let words: Vec<&str> = verb.split_whitespace().collect();
            if words.first() == Some(&"shell") {
                match crate::shell::parse(&words) {
                    Some((rows, cols)) => {
                        crate::shell::relay(&mut input, &out, &cfg.shell, rows, cols)?;
                    }
                    None => {
                        send(&out, b"error: usage: @shell [ROWS COLS]\n")?;
                        finish(&out, None, 2)?;
                    }
                }
                continue;
            }
            let r = match parse_verb(verb) {
                Ok(v) => clients.handle(v),
                Err(e) => reply(2, format!("error: {e}")),
            };
            let mut text = r.text;
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            send(&out, text.as_bytes())?;
            finish(&out, None, r.status)?;
        } else {
            run_shell(&cfg, &line, &out)?;
        }
    }
}

/// `serve --port PATH`: opens the port and serves it. Returns once the host side closes.
pub fn serve_port(port: &str, cfg: Config) -> io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(port)?;
    use std::os::unix::fs::FileTypeExt;
    let wait_for_host = file.metadata()?.file_type().is_char_device();
    let writer = file.try_clone()?;
    serve(
        file,
        writer,
        Config {
            wait_for_host,
            ..cfg
        },
    )
}

/// For PID 1 after the port closed: the old /init powered off.
pub fn power_off() -> ! {
    // SAFETY: sync and reboot(2) with a valid command.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    eprintln!(
        "vanish-agent: poweroff failed: {}",
        crate::sys::errno_text(errno())
    );
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn parses_verbs() {
        assert_eq!(parse_verb("ping"), Ok(Verb::Ping));
        assert_eq!(
            parse_verb("client start c1 kms"),
            Ok(Verb::ClientStart {
                id: "c1".into(),
                kind: Kind::Kms,
                device: "/dev/dri/card0".into(),
                wait: true
            })
        );
        assert_eq!(
            parse_verb("client  start c1 fbdev"),
            Ok(Verb::ClientStart {
                id: "c1".into(),
                kind: Kind::Fbdev,
                device: "/dev/fb0".into(),
                wait: true
            })
        );
        assert_eq!(
            parse_verb("client start x.y-z_2 idle-open /dev/dri/card1"),
            Ok(Verb::ClientStart {
                id: "x.y-z_2".into(),
                kind: Kind::IdleOpen,
                device: "/dev/dri/card1".into(),
                wait: true
            })
        );
        assert_eq!(
            parse_verb("client start k kms nowait"),
            Ok(Verb::ClientStart {
                id: "k".into(),
                kind: Kind::Kms,
                device: "/dev/dri/card0".into(),
                wait: false
            })
        );
        assert_eq!(
            parse_verb("client report c1"),
            Ok(Verb::ClientReport { id: "c1".into() })
        );
        assert_eq!(
            parse_verb("client stop c1"),
            Ok(Verb::ClientStop {
                id: "c1".into(),
                timeout_ms: 5000
            })
        );
        assert_eq!(
            parse_verb("client stop c1 250"),
            Ok(Verb::ClientStop {
                id: "c1".into(),
                timeout_ms: 250
            })
        );
        for bad in [
            "",
            "pong",
            "ping x",
            "client",
            "client start c1",
            "client start c1 gl",
            "client start ../x kms",
            "client start . kms",
            "client stop c1 soon",
            "client stop c1 -5",
            "client report",
            "client report a b",
            "client start c1 kms /dev/x extra",
        ] {
            assert!(parse_verb(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            parse_verb("frobnicate now"),
            Err("unknown verb @frobnicate".into())
        );
    }

    /// A serve loop on one end of a socketpair; the test talks on the other.
    struct Peer {
        conn: UnixStream,
        reader: BufReader<UnixStream>,
        dir: PathBuf,
    }

    impl Peer {
        fn new(name: &str) -> Peer {
            let (ours, theirs) = UnixStream::pair().unwrap();
            let dir = std::env::temp_dir()
                .join(format!("vanish-agent-serve-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let cfg = Config {
                agent_exe: PathBuf::from("/nonexistent/vanish-agent"),
                status_dir: dir.clone(),
                shell: PathBuf::from("/bin/sh"),
                reap_orphans: false,
                wait_for_host: false,
            };
            let w = theirs.try_clone().unwrap();
            thread::spawn(move || serve(theirs, w, cfg));
            ours.set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            Peer {
                reader: BufReader::new(ours.try_clone().unwrap()),
                conn: ours,
                dir,
            }
        }

        /// Sends a line; returns (output, status).
        fn run(&mut self, line: &str) -> (String, i32) {
            self.conn.write_all(format!("{line}\n").as_bytes()).unwrap();
            let mut out = String::new();
            loop {
                let mut l = String::new();
                assert!(self.reader.read_line(&mut l).unwrap() > 0, "agent closed");
                if let Some(s) = l.strip_prefix('\u{1e}') {
                    return (out, s.trim_end().parse().unwrap());
                }
                out.push_str(&l);
            }
        }
    }

    impl Drop for Peer {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    impl Peer {
        /// Sends a typed request; returns the decoded reply line.
        fn ask(&mut self, request: &Request) -> protocol::Reply {
            self.ask_line(&protocol::encode_request(request))
        }

        fn ask_line(&mut self, line: &str) -> protocol::Reply {
            self.conn.write_all(format!("{line}\n").as_bytes()).unwrap();
            let mut l = String::new();
            assert!(self.reader.read_line(&mut l).unwrap() > 0, "agent closed");
            protocol::decode_reply(&l).unwrap_or_else(|e| panic!("{e}"))
        }
    }

    #[test]
    fn answers_typed_requests() {
        use protocol::{GuestError, Reply as R};
        let mut p = Peer::new("typed");
        assert!(
            matches!(p.ask(&Request::Status), R::Status { kernel_release } if !kernel_release.is_empty())
        );
        let r = p.ask(&Request::ExecRun {
            id: "r1".into(),
            timeout_ms: 5000,
            cmd: "echo hi; echo oops >&2; exit 3".into(),
        });
        let R::Client(r) = r else { panic!("{r:?}") };
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.kind.as_deref(), Some("exec"));
        assert_eq!(r.detail_str("stdout"), Some("hi\n"));
        assert_eq!(
            r.details.get("timed_out"),
            Some(&serde_json::Value::Bool(false))
        );
        let r = p.ask(&Request::ExecStart {
            id: "b1".into(),
            cmd: "sleep 30".into(),
        });
        assert!(
            matches!(&r, R::Started { id, pid, report: None } if id == "b1" && *pid > 0),
            "{r:?}"
        );
        let R::Client(r) = p.ask(&Request::ClientStop {
            id: "b1".into(),
            timeout_ms: 3000,
        }) else {
            panic!("no report")
        };
        assert_eq!(r.exit_signal.as_deref(), Some("SIGTERM"));
        assert!(r.exited && !r.alive);
        assert_eq!(
            p.ask(&Request::ClientReport { id: "ghost".into() }),
            R::Error(GuestError::NoClient { id: "ghost".into() })
        );
        let r = p.ask(&Request::ClientStart {
            id: "c1".into(),
            kind: protocol::ClientKind::Kms,
            device: "/dev/dri/card0".into(),
            wait: true,
        });
        assert!(
            matches!(&r, R::Error(GuestError::ClientFailed { message, report: None }) if message.starts_with("cannot start /nonexistent")),
            "{r:?}"
        );
        assert!(matches!(
            p.ask(&Request::ExecStart {
                id: "../x".into(),
                cmd: "true".into()
            }),
            R::Error(GuestError::BadRequest { .. })
        ));
        assert!(matches!(
            p.ask(&Request::SysfsWrite {
                path: "/tmp/x".into(),
                value: "1".into(),
                timeout_ms: 100
            }),
            R::Error(GuestError::BadRequest { .. })
        ));
        // An unknown operation and a truncated request are answered, and the agent goes on.
        assert!(matches!(
            p.ask_line(r#"@req {"op":"format-disk"}"#),
            R::Error(GuestError::BadRequest { message }) if message.contains("format-disk")
        ));
        assert!(matches!(
            p.ask_line(r#"@req {"op":"irq-count","na"#),
            R::Error(GuestError::BadRequest { .. })
        ));
        assert_eq!(p.run("echo still here"), ("still here\n".into(), 0));
    }

    #[test]
    fn frames_shell_output() {
        let mut p = Peer::new("shell");
        assert_eq!(p.run("echo hi; echo err >&2"), ("hi\nerr\n".into(), 0));
        assert_eq!(p.run("exit 3"), (String::new(), 3));
        assert_eq!(p.run("kill -9 $$"), (String::new(), 137));
        assert_eq!(p.run("printf abc"), ("abc\n".into(), 0));
        assert_eq!(p.run(""), (String::new(), 0));
        assert_eq!(p.run("read x || echo eof"), ("eof\n".into(), 0));
        assert_eq!(
            p.run("printf 'a\\tb\\037c\\n'"),
            ("a\tb\u{1f}c\n".into(), 0)
        );
        let big = p.run("i=0; while [ $i -lt 2000 ]; do echo line-$i; i=$((i+1)); done");
        assert_eq!(big.0.lines().count(), 2000);
        assert_eq!(big.0.lines().last(), Some("line-1999"));
    }

    #[test]
    fn background_jobs_do_not_hold_the_reply() {
        let mut p = Peer::new("bg");
        let t = Instant::now();
        assert_eq!(
            p.run("echo before; (sleep 2; echo late) & echo now"),
            ("before\nnow\n".into(), 0)
        );
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "waited for the background job: {:?}",
            t.elapsed()
        );
        assert_eq!(p.run("echo next"), ("next\n".into(), 0));
    }

    #[test]
    fn verbs_and_bad_input() {
        let mut p = Peer::new("verbs");
        assert_eq!(p.run("@ping"), ("pong\n".into(), 0));
        assert_eq!(p.run("@ping\r"), ("pong\n".into(), 0));
        let (out, st) = p.run("@nope");
        assert_eq!((out.as_str(), st), ("error: unknown verb @nope\n", 2));
        assert_eq!(p.run("@").1, 2);
        assert_eq!(p.run("@client start"), ("error: usage: @client start ID KIND [DEVICE] | @client report ID | @client stop ID [TIMEOUT_MS]\n".into(), 2));
        assert_eq!(
            p.run("@client report ghost"),
            ("error: no client ghost\n".into(), 1)
        );
        assert_eq!(
            p.run("@client stop ghost"),
            ("error: no client ghost\n".into(), 1)
        );
        let (out, st) = p.run("@client start c1 kms");
        assert_eq!(st, 1);
        assert!(
            out.starts_with("error: cannot start /nonexistent/vanish-agent"),
            "{out}"
        );
        // Invalid UTF-8 is not fatal.
        p.conn.write_all(b"echo \xff\xfe ok\n").unwrap();
        let mut l = Vec::new();
        p.reader.read_until(b'\n', &mut l).unwrap();
        assert!(l.ends_with(b" ok\n"));
        l.clear();
        p.reader.read_until(b'\n', &mut l).unwrap();
        assert_eq!(l, b"\x1e0\n");
        assert_eq!(p.run("echo still here"), ("still here\n".into(), 0));
    }

    #[test]
    fn exec_runs_commands_and_stops_them() {
        let mut p = Peer::new("exec");
        let (out, st) = p.run("@exec run r1 5000 -- echo hi; echo oops >&2; exit 3");
        assert_eq!(st, 0, "{out}");
        let o = Object::parse(out.trim()).unwrap();
        assert_eq!(o.get("exit_code"), Some("3"), "{out}");
        assert_eq!(o.get_str("stdout").as_deref(), Some("hi\n"));
        assert_eq!(o.get_str("stderr").as_deref(), Some("oops\n"));
        assert_eq!(o.get("timed_out"), Some("false"));
        assert_eq!(o.get("exited"), Some("true"));

        let t = Instant::now();
        let (out, _) = p.run("@exec run r2 300 -- echo started; sleep 10");
        assert!(t.elapsed() < Duration::from_secs(5));
        let o = Object::parse(out.trim()).unwrap();
        assert_eq!(o.get("timed_out"), Some("true"), "{out}");
        assert_eq!(
            o.get_str("exit_signal").as_deref(),
            Some("SIGTERM"),
            "{out}"
        );
        assert_eq!(o.get_str("stdout").as_deref(), Some("started\n"));

        let (out, st) = p.run("@exec start b1 -- sleep 30");
        assert_eq!(st, 0, "{out}");
        assert!(out.starts_with("started b1 pid="), "{out}");
        let (out, _) = p.run("@client report b1");
        let o = Object::parse(out.trim()).unwrap();
        assert_eq!(o.get_str("state").as_deref(), Some("running"), "{out}");
        assert_eq!(o.get_str("kind").as_deref(), Some("exec"));
        let (out, st) = p.run("@client stop b1 3000");
        assert_eq!(st, 0, "{out}");
        let o = Object::parse(out.trim()).unwrap();
        assert_eq!(
            o.get_str("exit_signal").as_deref(),
            Some("SIGTERM"),
            "{out}"
        );
        assert_eq!(o.get("sigkilled"), Some("false"));

        // Ignores SIGTERM (the sleeps inherit that): SIGKILL after the grace.
        p.run("@exec start b2 -- trap '' TERM; echo armed; while :; do sleep 0.1; done");
        // Stop it only once the trap is in place (a SIGTERM before it would just kill it).
        let armed = std::time::Instant::now();
        loop {
            let (out, _) = p.run("@client report b2");
            let stdout = Object::parse(out.trim())
                .ok()
                .and_then(|o| o.get_str("stdout"))
                .unwrap_or_default();
            if stdout.contains("armed") || armed.elapsed() > Duration::from_secs(10) {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let (out, st) = p.run("@client stop b2 1000");
        assert_eq!(st, 0, "{out}");
        let o = Object::parse(out.trim()).unwrap();
        assert_eq!(
            o.get_str("exit_signal").as_deref(),
            Some("SIGKILL"),
            "{out}"
        );
        assert_eq!(o.get("sigkilled"), Some("true"));

        let (out, _) = p.run("@exec start b3 -- exit 7");
        assert!(out.starts_with("started b3"));
        thread::sleep(Duration::from_millis(300));
        let (out, _) = p.run("@client report b3");
        let o = Object::parse(out.trim()).unwrap();
        assert_eq!(o.get("exit_code"), Some("7"), "{out}");
        assert_eq!(o.get_str("state").as_deref(), Some("exited"));

        assert_eq!(p.run("@exec start b4").1, 2);
        assert_eq!(p.run("@exec run x soon -- true").1, 2);
        assert_eq!(p.run("@exec start ../x -- true").1, 2);
        assert_eq!(p.run("@execute").1, 2);
    }

    #[test]
    fn shell_relays_a_pty_then_returns_to_lines() {
        let mut p = Peer::new("shell-pty");
        p.conn.write_all(b"@shell 30 100\n").unwrap();
        p.conn.write_all(b"echo hi-$((6*7)); stty size\n").unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let want = |seen: &[u8], s: &[u8]| seen.windows(s.len()).any(|w| w == s);
        while !(want(&seen, b"hi-42") && want(&seen, b"30 100")) {
            let n = p
                .reader
                .read(&mut buf)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&seen)));
            assert!(n > 0, "agent closed: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        p.conn.write_all(b"exit 5\n").unwrap();
        while !want(&seen, b"\x1evanish-shell-exit 5\n") {
            let n = p
                .reader
                .read(&mut buf)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&seen)));
            assert!(n > 0, "agent closed: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        p.conn.write_all(b"\n").unwrap();
        assert_eq!(p.run("echo back"), ("back\n".into(), 0));
        assert_eq!(p.run("@shell x").1, 2);
    }

    #[test]
    fn ends_when_the_input_closes() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let w = theirs.try_clone().unwrap();
        let h = thread::spawn(move || serve(theirs, w, Config::default()));
        let mut ours = ours;
        ours.write_all(b"echo one\nunterminated").unwrap();
        ours.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(h.join().unwrap().is_ok());
        let mut s = String::new();
        ours.read_to_string(&mut s).unwrap();
        assert_eq!(s, "one\n\u{1e}0\n");
    }

    #[test]
    fn report_merges_the_agents_view() {
        let dir = std::env::temp_dir().join(format!("vanish-agent-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status_path = dir.join("s.json");
        std::fs::write(
            &status_path,
            r#"{"kind":"kms","pid":42,"state":"running","exited":false,"frames":9}"#,
        )
        .unwrap();
        let mut c = ClientProc {
            pid: 42,
            status_path,
            exit: None,
            exec: None,
        };
        let o = report("c1", &c);
        assert_eq!(
            o.to_json(),
            r#"{"kind":"kms","pid":42,"state":"running","exited":false,"frames":9,"id":"c1","alive":true,"exit_code":null,"exit_signal":null}"#
        );
        c.exit = Some(Exit::Signal(libc::SIGBUS));
        let o = report("c1", &c);
        assert_eq!(o.get_str("state").as_deref(), Some("killed"));
        assert_eq!(o.get_str("exit_signal").as_deref(), Some("SIGBUS"));
        assert_eq!(o.get("exited"), Some("true"));
        assert_eq!(o.get("alive"), Some("false"));
        std::fs::remove_dir_all(&dir).unwrap();
        let o = report("c1", &c);
        assert!(o.get_str("status_file").unwrap().starts_with("unreadable"));
        let st = proc_file(std::process::id() as i32, "stat").unwrap();
        assert!(st.len() > 3 && st.as_bytes()[1] == b' ', "{st}");
    }
}
