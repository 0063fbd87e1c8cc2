//! `vanish-agent serve`: the guest end of the host's port.
//!
//! The port carries the typed protocol of crate `guest_protocol`, the one place for what the
//! guest can be asked: a line `@req JSON` is answered by one line `\x1e JSON-reply`
//! ([`Clients::request`]). The one other line is `@shell [ROWS COLS]` (`vanish run --shell`):
//! an interactive `sh -i` on a pty, relayed raw until it exits (see `shell.rs`). Any other
//! line is answered with a `bad-request` error, except an empty one, which has nothing to
//! answer (and an unasked reply would be taken for the answer to the host's next request).
//!
//! A virtio-serial port reads as end-of-file while the host side is not connected: until the
//! first line arrives the agent keeps waiting for the host; end-of-file after that means the host
//! went away, and `main` (as PID 1) powers the guest off like the old shell loop did.
//!
//! Output that background commands write after their request was answered is not forwarded:
//! a command's output is captured into its report (`exec.rs`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use guest_protocol::{self as protocol, ClientKind, ClientReport, GuestError, Request};
use serde_json::{Map, Value};

use crate::exec::{group_members, kill_group, Exec};
use crate::sys::{errno, signal_name};

/// How long `client-start` with `wait` waits for the client to be ready (its first frame: a
/// modeset and a flip). 5 s was once too little for a kms client on a TCG guest sharing two
/// cores with kernel builds; a client that really cannot start still fails, only later. The
/// host waits 30 s for the answer.
pub const START_WAIT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(10);
/// How much of an unrecognised line its error quotes.
const QUOTE_CHARS: usize = 80;

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

/// A client id names files in the status directory: 1-64 of A-Za-z0-9._-, not `.` or `..`.
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

/// The clients this agent started, by id.
pub struct Clients {
    cfg: Config,
    procs: BTreeMap<String, ClientProc>,
}

struct ClientProc {
    pid: i32,
    status_path: PathBuf,
    exit: Option<Exit>,
    /// A user command (`exec-start`, `exec-run`), not one of our clients.
    exec: Option<Exec>,
}

/// What starting a client came to: its pid once it runs, its report if the agent waited for
/// it, and why it failed if it did.
struct Started {
    pid: Option<i32>,
    report: Option<ClientReport>,
    error: Option<String>,
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

    /// Answers one request of the typed protocol.
    pub fn request(&mut self, request: Request) -> protocol::Reply {
        use protocol::Reply as R;
        let failed = |message: String| R::Error(GuestError::Failed { message });
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
                Err(message) => failed(message),
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
                    Err(e) => return bad_request(e),
                };
                let started = self.start_client(&id, kind, &device, wait);
                match (started.pid, started.error) {
                    (Some(pid), None) => R::Started {
                        id,
                        pid,
                        report: started.report,
                    },
                    (_, error) => R::Error(GuestError::ClientFailed {
                        message: error.unwrap_or_default(),
                        report: started.report.map(Box::new),
                    }),
                }
            }
            Request::ClientReport { id } => match self.procs.get(&id) {
                Some(c) => R::Client(report(&id, c)),
                None => R::Error(GuestError::NoClient { id }),
            },
            Request::ClientStop { id, timeout_ms } => match self.stop_client(&id, timeout_ms) {
                Some(r) => R::Client(r),
                None => R::Error(GuestError::NoClient { id }),
            },
            Request::ExecStart { id, cmd } => {
                let id = match valid_id(&id) {
                    Ok(id) => id,
                    Err(e) => return bad_request(e),
                };
                match self.exec_start(&id, &cmd) {
                    Ok(pid) => R::Started {
                        id,
                        pid,
                        report: None,
                    },
                    Err(message) => failed(message),
                }
            }
            Request::ExecRun {
                id,
                timeout_ms,
                cmd,
            } => {
                let id = match valid_id(&id) {
                    Ok(id) => id,
                    Err(e) => return bad_request(e),
                };
                match self.run_command(&id, timeout_ms, &cmd) {
                    Ok(r) => R::Client(r),
                    Err(message) => failed(message),
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

    fn exec_start(&mut self, id: &str, cmd: &str) -> Result<i32, String> {
        self.reap();
        if let Some(c) = self.procs.get(id).filter(|c| c.exit.is_none()) {
            return Err(format!("client {id} is already running (pid={})", c.pid));
        }
        let (child, exec) = Exec::spawn(&self.cfg.shell, cmd)
            .map_err(|e| format!("cannot run {}: {e}", self.cfg.shell.display()))?;
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

    /// Runs a command to its end (or stops it at `timeout_ms`): its report.
    fn run_command(
        &mut self,
        id: &str,
        timeout_ms: u64,
        cmd: &str,
    ) -> Result<ClientReport, String> {
        self.exec_start(id, cmd)?;
        let started = Instant::now();
        let deadline = started + Duration::from_millis(timeout_ms);
        let mut r = loop {
            if self.ended(id) {
                self.drain(id);
                let Some(c) = self.procs.get(id) else {
                    return Err(format!("no client {id}"));
                };
                let mut r = report(id, c);
                detail(&mut r, "timed_out", false);
                break r;
            }
            if Instant::now() >= deadline {
                let Some(mut r) = self.stop_exec(id, 5000) else {
                    return Err(format!("no client {id}"));
                };
                detail(&mut r, "timed_out", true);
                break r;
            }
            thread::sleep(POLL);
        };
        detail(&mut r, "timeout_ms", timeout_ms);
        detail(&mut r, "elapsed_ms", started.elapsed().as_millis() as u64);
        self.procs.remove(id);
        Ok(r)
    }

    /// SIGTERM to the command's process group, SIGKILL after a grace (2 s or half the
    /// timeout); the report (`state` "hung", with every member's /proc stack, if the group is
    /// still there after `timeout_ms`). None: no client `id`.
    fn stop_exec(&mut self, id: &str, timeout_ms: u64) -> Option<ClientReport> {
        let pid = self.procs.get(id)?.pid;
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
                let mut r = report(id, self.procs.get(id)?);
                detail(&mut r, "sigkilled", killed);
                return Some(r);
            }
            if !killed && Instant::now() >= start + grace {
                kill_group(pid, libc::SIGKILL);
                killed = true;
            }
            if Instant::now() >= deadline {
                let mut r = report(id, self.procs.get(id)?);
                r.state = Some("hung".into());
                detail(&mut r, "sigkilled", killed);
                let members = group_members(pid);
                hung_details(&mut r, members.first().copied().unwrap_or(pid));
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
                detail(&mut r, "group_stacks", all.join("\n"));
                detail(&mut r, "waited_ms", timeout_ms);
                return Some(r);
            }
            thread::sleep(POLL);
        }
    }

    /// Starts client `id`; with `wait`, waits until it is ready (or failed).
    fn start_client(&mut self, id: &str, kind: ClientKind, device: &str, wait: bool) -> Started {
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
        let ready: Result<(), String> = loop {
            self.reap();
            let Some(c) = self.procs.get(id) else {
                break Err("vanished from the table".to_string());
            };
            let state = read_status(&c.status_path)
                .ok()
                .and_then(|mut s| take_str(&mut s, "state"));
            match (state.as_deref(), c.exit) {
                (Some("ready" | "running"), _) => break Ok(()),
                // A failed client writes its state, then exits: wait for the exit, so that the
                // report that follows has the exit code.
                (Some("failed"), None) if Instant::now() < deadline => thread::sleep(POLL),
                (Some("failed"), _) => break Err("failed".to_string()),
                (_, Some(exit)) => {
                    break Err(format!("exited before it was ready ({})", exit_text(exit)))
                }
                _ if Instant::now() >= deadline => {
                    break Err(format!(
                        "not ready within {} ms (state={})",
                        START_WAIT.as_millis(),
                        state.as_deref().unwrap_or("none")
                    ))
                }
                _ => thread::sleep(POLL),
            }
        };
        let Some(c) = self.procs.get(id) else {
            return Started {
                pid: Some(pid),
                report: None,
                error: ready.err().map(|verdict| format!("client {id} {verdict}")),
            };
        };
        let report = report(id, c);
        let error = ready.err().map(|verdict| {
            match report
                .detail_str("last_error")
                .filter(|why| !why.is_empty())
            {
                Some(why) => format!("client {id} {verdict}: {why}"),
                None => format!("client {id} {verdict}"),
            }
        });
        Started {
            pid: Some(pid),
            report: Some(report),
            error,
        }
    }

    /// Stops client `id` (SIGTERM; a command's group: SIGKILL after a grace) and waits up to
    /// `timeout_ms`: its final report, `state` "hung" with its /proc state, wchan and stack if
    /// it is still there. None: no client `id`.
    fn stop_client(&mut self, id: &str, timeout_ms: u64) -> Option<ClientReport> {
        self.reap();
        let c = self.procs.get(id)?;
        let pid = c.pid;
        if c.exec.is_some() {
            return self.stop_exec(id, timeout_ms);
        }
        if c.exit.is_none() {
            // SAFETY: plain kill(2); the pid is our unreaped child, so it cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            self.reap();
            let c = self.procs.get(id)?;
            if c.exit.is_some() {
                return Some(report(id, c));
            }
            if Instant::now() >= deadline {
                let mut r = report(id, c);
                r.state = Some("hung".into());
                hung_details(&mut r, pid);
                detail(&mut r, "waited_ms", timeout_ms);
                return Some(r);
            }
            thread::sleep(POLL);
        }
    }
}

fn bad_request(message: String) -> protocol::Reply {
    protocol::Reply::Error(GuestError::BadRequest { message })
}

/// Sets one of a report's free-form details.
fn detail(r: &mut ClientReport, key: &str, value: impl Into<Value>) {
    r.details.insert(key.to_string(), value.into());
}

/// A hung process's `proc_state`, `wchan` and `stack` (null where /proc has none).
fn hung_details(r: &mut ClientReport, pid: i32) {
    for (key, file) in [
        ("proc_state", "stat"),
        ("wchan", "wchan"),
        ("stack", "stack"),
    ] {
        detail(r, key, proc_file(pid, file));
    }
}

/// Removes `key` from a status object and returns it if it was a string.
fn take_str(fields: &mut Map<String, Value>, key: &str) -> Option<String> {
    match fields.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// A client's status file: one JSON object (`client.rs` `StatusFile`).
fn read_status(path: &std::path::Path) -> Result<Map<String, Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

fn exit_text(exit: Exit) -> String {
    match exit {
        Exit::Code(c) => format!("exit code {c}"),
        Exit::Signal(s) => format!("killed by {}", signal_name(s)),
    }
}

/// `exit_code` and `exit_signal` of a report.
fn exit_fields(exit: Option<Exit>) -> (Option<i32>, Option<String>) {
    match exit {
        Some(Exit::Code(code)) => (Some(code), None),
        Some(Exit::Signal(sig)) => (None, Some(signal_name(sig))),
        None => (None, None),
    }
}

/// The client's status file with the agent's knowledge in the typed fields: `id`, `pid`,
/// `alive`, `exited` (the process is gone), `exit_code`, `exit_signal`; `state` becomes
/// "killed" or "died" if the process ended without writing its final state. The rest of the
/// file is the report's details.
fn report(id: &str, c: &ClientProc) -> ClientReport {
    if let Some(e) = &c.exec {
        return exec_report(id, c, e);
    }
    let mut details = read_status(&c.status_path).unwrap_or_else(|e| {
        Map::from_iter([(
            "status_file".to_string(),
            Value::from(format!("unreadable: {e}")),
        )])
    });
    // The agent's view replaces what the client wrote of it.
    for key in ["id", "pid", "alive", "exited", "exit_code", "exit_signal"] {
        details.remove(key);
    }
    let kind = take_str(&mut details, "kind");
    let mut state = take_str(&mut details, "state");
    if let Some(exit) = c.exit {
        if !matches!(state.as_deref(), Some("exited" | "failed")) {
            let ended = match exit {
                Exit::Signal(_) => "killed",
                Exit::Code(_) => "died",
            };
            state = Some(ended.to_string());
        }
    }
    let (exit_code, exit_signal) = exit_fields(c.exit);
    ClientReport {
        id: id.to_string(),
        pid: c.pid,
        kind,
        state,
        alive: c.exit.is_none(),
        exited: c.exit.is_some(),
        exit_code,
        exit_signal,
        details,
    }
}

/// A command's report: `kind` "exec", `state` running, exited (with `exit_code`) or killed
/// (with `exit_signal`), `alive`/`exited` for the whole process group, and its output.
fn exec_report(id: &str, c: &ClientProc, e: &Exec) -> ClientReport {
    let alive = c.exit.is_none() || !group_members(c.pid).is_empty();
    let state = match c.exit {
        _ if alive => "running",
        Some(Exit::Signal(_)) => "killed",
        _ => "exited",
    };
    let mut details = Map::new();
    details.insert("cmd".to_string(), Value::from(e.cmd.as_str()));
    e.output_into(&mut details);
    let (exit_code, exit_signal) = exit_fields(c.exit);
    ClientReport {
        id: id.to_string(),
        pid: c.pid,
        kind: Some("exec".to_string()),
        state: Some(state.to_string()),
        alive,
        exited: !alive,
        exit_code,
        exit_signal,
        details,
    }
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

/// Writes one reply line.
fn send_reply<W: Write>(out: &Mutex<W>, reply: &protocol::Reply) -> io::Result<()> {
    send(
        out,
        format!("{}\n", protocol::encode_reply(reply)).as_bytes(),
    )
}

/// Serves the port until `input` ends (Ok) or fails.
pub fn serve<R: Read, W: Write + Send + 'static>(
    input: R,
    output: W,
    cfg: Config,
) -> io::Result<()> {
    let out = std::sync::Arc::new(Mutex::new(output));
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
                Err(e) => bad_request(e.to_string()),
            };
            send_reply(&out, &answer)?;
        } else if let Some(words) = shell_words(&line) {
            match crate::shell::parse(&words) {
                Some((rows, cols)) => {
                    crate::shell::relay(&mut input, &out, &cfg.shell, rows, cols)?;
                }
                None => send_reply(
                    &out,
                    &bad_request(format!("usage: @shell [ROWS COLS], got {line:?}")),
                )?,
            }
        } else if !line.trim().is_empty() {
            let quoted: String = line.chars().take(QUOTE_CHARS).collect();
            send_reply(
                &out,
                &bad_request(format!(
                    "expected a line `{}JSON` or `@shell [ROWS COLS]`, got {quoted:?}",
                    protocol::REQUEST_PREFIX
                )),
            )?;
        }
    }
}

/// The words of an `@shell ...` line.
fn shell_words(line: &str) -> Option<Vec<&str>> {
    let words: Vec<&str> = line.strip_prefix('@')?.split_whitespace().collect();
    (words.first() == Some(&"shell")).then_some(words)
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
    use protocol::Reply as R;
    use std::os::unix::net::UnixStream;

    /// Stands in for `vanish-agent client KIND --device DEV --status FILE` (unit tests have no
    /// agent binary): writes a status file as the real client does. `idle-open` gets ready
    /// and exits on SIGTERM; `fbdev` fails its setup; `kms` gets ready and ignores SIGTERM.
    const FAKE_CLIENT: &str = r#"#!/bin/sh
kind=$2 device=$4 status=$6
st() { printf '{"kind":"%s","device":"%s","pid":1,"state":"%s","frames":3%s}\n' "$kind" "$device" "$1" "$2" > "$status.tmp" && mv "$status.tmp" "$status"; }
case $kind in
fbdev) st failed ',"last_error":"no framebuffer","exited":true'; exit 1 ;;
kms) trap '' TERM ;;
*) trap 'st exited ",\"close\":\"ok\""; exit 0' TERM ;;
esac
st ready
while :; do sleep 0.05; done
"#;

    /// A serve loop on one end of a socketpair; the test talks on the other.
    struct Peer {
        conn: UnixStream,
        reader: BufReader<UnixStream>,
        dir: PathBuf,
    }

    impl Peer {
        fn new(name: &str) -> Peer {
            Peer::with_agent(name, |_| PathBuf::from("/nonexistent/vanish-agent"))
        }

        /// With the fake client above as the agent binary.
        fn with_fake_client(name: &str) -> Peer {
            Peer::with_agent(name, |dir| {
                use std::os::unix::fs::PermissionsExt;
                let exe = dir.join("fake-agent");
                std::fs::write(&exe, FAKE_CLIENT).unwrap();
                std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
                exe
            })
        }

        fn with_agent(name: &str, agent_exe: impl FnOnce(&std::path::Path) -> PathBuf) -> Peer {
            let (ours, theirs) = UnixStream::pair().unwrap();
            let dir = std::env::temp_dir()
                .join(format!("vanish-agent-serve-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let cfg = Config {
                agent_exe: agent_exe(&dir),
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

        /// Sends a typed request; returns the decoded reply line.
        fn ask(&mut self, request: &Request) -> R {
            self.ask_line(&protocol::encode_request(request))
        }

        /// Sends one raw line; returns the decoded reply line.
        fn ask_line(&mut self, line: &str) -> R {
            self.conn.write_all(format!("{line}\n").as_bytes()).unwrap();
            self.reply()
        }

        fn reply(&mut self) -> R {
            let mut l = String::new();
            assert!(self.reader.read_line(&mut l).unwrap() > 0, "agent closed");
            assert!(l.starts_with(protocol::REPLY_MARK), "not a reply: {l:?}");
            protocol::decode_reply(&l).unwrap_or_else(|e| panic!("{e}"))
        }

        /// A request whose answer must be a report.
        fn report(&mut self, request: &Request) -> ClientReport {
            match self.ask(request) {
                R::Client(r) => r,
                other => panic!("{request:?}: {other:?}"),
            }
        }

        fn run(&mut self, id: &str, timeout_ms: u64, cmd: &str) -> ClientReport {
            self.report(&Request::ExecRun {
                id: id.into(),
                timeout_ms,
                cmd: cmd.into(),
            })
        }

        fn start(&mut self, id: &str, cmd: &str) -> R {
            self.ask(&Request::ExecStart {
                id: id.into(),
                cmd: cmd.into(),
            })
        }

        fn stop(&mut self, id: &str, timeout_ms: u64) -> R {
            self.ask(&Request::ClientStop {
                id: id.into(),
                timeout_ms,
            })
        }

        fn client_start(&mut self, id: &str, kind: ClientKind, wait: bool) -> R {
            self.ask(&Request::ClientStart {
                id: id.into(),
                kind,
                device: kind.default_device().into(),
                wait,
            })
        }
    }

    impl Drop for Peer {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn bad(r: &R) -> &str {
        match r {
            R::Error(GuestError::BadRequest { message }) => message,
            other => panic!("not a bad-request error: {other:?}"),
        }
    }

    #[test]
    fn bad_input_gets_a_typed_error_and_the_agent_goes_on() {
        let mut p = Peer::new("bad");
        assert!(
            matches!(p.ask(&Request::Status), R::Status { kernel_release } if !kernel_release.is_empty())
        );
        // An unknown operation, a truncated line, a field of the wrong type, an unknown kind.
        assert!(bad(&p.ask_line(r#"@req {"op":"format-disk"}"#)).contains("format-disk"));
        assert!(bad(&p.ask_line(r#"@req {"op":"irq-count","na"#)).contains("EOF"));
        assert!(
            bad(&p.ask_line(r#"@req {"op":"peek","bdf":"x","bar":"two","offset":0}"#))
                .contains("invalid type")
        );
        assert!(bad(&p.ask_line(
            r#"@req {"op":"client-start","id":"a","kind":"gl","device":"/dev/x","wait":true}"#
        ))
        .contains("gl"));
        assert!(!bad(&p.ask_line("@req")).is_empty());
        // The old text verbs and shell lines are gone: each is one error reply.
        for old in [
            "@ping",
            "@client start c1 kms",
            "@exec run r 100 -- true",
            "echo hi",
        ] {
            let message = bad(&p.ask_line(old)).to_string();
            assert!(
                message.starts_with("expected a line `@req JSON` or `@shell [ROWS COLS]`"),
                "{old}: {message}"
            );
        }
        assert!(bad(&p.ask_line("@shell x")).starts_with("usage: @shell"));
        let long = "x".repeat(10_000);
        assert!(bad(&p.ask_line(&long)).len() < 200, "quotes the line whole");
        // Invalid UTF-8 is not fatal.
        p.conn.write_all(b"@req \xff\xfe\n").unwrap();
        bad(&p.reply());
        // Ids name files: refused before anything runs.
        assert!(bad(&p.start("../x", "true")).contains("bad client id"));
        assert!(bad(&p.ask(&Request::ExecRun {
            id: String::new(),
            timeout_ms: 100,
            cmd: "true".into()
        }))
        .contains("bad client id"));
        assert!(bad(&p.client_start("a/b", ClientKind::Kms, true)).contains("bad client id"));
        assert!(bad(&p.ask(&Request::SysfsWrite {
            path: "/tmp/x".into(),
            value: "1".into(),
            timeout_ms: 100
        }))
        .contains("not a sysfs file"));
        // An empty line has nothing to answer: the next reply is the next request's.
        p.conn.write_all(b"\n\r\n").unwrap();
        assert!(matches!(p.ask(&Request::Status), R::Status { .. }));
        assert_eq!(
            p.ask(&Request::ClientReport { id: "ghost".into() }),
            R::Error(GuestError::NoClient { id: "ghost".into() })
        );
        assert_eq!(
            p.stop("ghost", 100),
            R::Error(GuestError::NoClient { id: "ghost".into() })
        );
        let r = p.client_start("c1", ClientKind::Kms, true);
        assert!(
            matches!(&r, R::Error(GuestError::ClientFailed { message, report: None }) if message.starts_with("cannot start /nonexistent")),
            "{r:?}"
        );
    }

    #[test]
    fn exec_runs_commands_and_stops_them_at_the_timeout() {
        let mut p = Peer::new("exec-run");
        let r = p.run("r1", 5000, "echo hi; echo oops >&2; exit 3");
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.exit_signal, None);
        assert_eq!(r.kind.as_deref(), Some("exec"));
        assert_eq!(r.state.as_deref(), Some("exited"));
        assert!(r.exited && !r.alive);
        assert_eq!(r.detail_str("stdout"), Some("hi\n"));
        assert_eq!(r.detail_str("stderr"), Some("oops\n"));
        assert_eq!(r.details["timed_out"], false);
        assert_eq!(r.details["timeout_ms"], 5000);

        let t = Instant::now();
        let r = p.run("r2", 300, "echo started; sleep 10");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert_eq!(r.details["timed_out"], true, "{r:?}");
        assert_eq!(r.exit_signal.as_deref(), Some("SIGTERM"), "{r:?}");
        assert_eq!(r.detail_str("stdout"), Some("started\n"));
        // A finished run leaves no client behind: the id is free again.
        assert_eq!(
            p.ask(&Request::ClientReport { id: "r2".into() }),
            R::Error(GuestError::NoClient { id: "r2".into() })
        );
        assert_eq!(p.run("r2", 5000, "exit 0").exit_code, Some(0));
    }

    #[test]
    fn exec_starts_commands_and_stops_them_with_sigterm_then_sigkill() {
        let mut p = Peer::new("exec-stop");
        let r = p.start("b1", "sleep 30");
        assert!(
            matches!(&r, R::Started { id, pid, report: None } if id == "b1" && *pid > 0),
            "{r:?}"
        );
        let r = p.start("b1", "true");
        assert!(
            matches!(&r, R::Error(GuestError::Failed { message }) if message.starts_with("client b1 is already running")),
            "{r:?}"
        );
        let r = p.report(&Request::ClientReport { id: "b1".into() });
        assert_eq!(r.state.as_deref(), Some("running"));
        assert_eq!(r.kind.as_deref(), Some("exec"));
        assert!(r.alive && !r.exited);
        let R::Client(r) = p.stop("b1", 3000) else {
            panic!("no report")
        };
        assert_eq!(r.exit_signal.as_deref(), Some("SIGTERM"));
        assert_eq!(r.details["sigkilled"], false);
        assert!(r.exited && !r.alive);

        // Ignores SIGTERM (the sleeps inherit that): SIGKILL after the grace.
        p.start(
            "b2",
            "trap '' TERM; echo armed; while :; do sleep 0.1; done",
        );
        // Stop it only once the trap is in place (a SIGTERM before it would just kill it).
        let armed = Instant::now();
        while !p
            .report(&Request::ClientReport { id: "b2".into() })
            .detail_str("stdout")
            .is_some_and(|s| s.contains("armed"))
        {
            assert!(armed.elapsed() < Duration::from_secs(10), "never armed");
            thread::sleep(Duration::from_millis(50));
        }
        let R::Client(r) = p.stop("b2", 1000) else {
            panic!("no report")
        };
        assert_eq!(r.exit_signal.as_deref(), Some("SIGKILL"), "{r:?}");
        assert_eq!(r.details["sigkilled"], true);

        p.start("b3", "exit 7");
        thread::sleep(Duration::from_millis(300));
        let r = p.report(&Request::ClientReport { id: "b3".into() });
        assert_eq!(r.exit_code, Some(7), "{r:?}");
        assert_eq!(r.state.as_deref(), Some("exited"));
    }

    #[test]
    fn clients_start_report_and_stop() {
        let mut p = Peer::with_fake_client("clients");
        let (pid, ready) = match p.client_start("c1", ClientKind::IdleOpen, true) {
            R::Started {
                id,
                pid,
                report: Some(ready),
            } if id == "c1" => (pid, ready),
            other => panic!("{other:?}"),
        };
        assert_eq!(ready.pid, pid, "the agent's pid, not the file's");
        assert_eq!(ready.kind.as_deref(), Some("idle-open"));
        assert_eq!(ready.state.as_deref(), Some("ready"));
        assert_eq!(ready.detail_str("device"), Some("/dev/dri/card0"));
        assert_eq!(ready.details["frames"], 3);
        assert!(ready.alive && !ready.exited);
        let again = p.client_start("c1", ClientKind::IdleOpen, true);
        assert!(
            matches!(&again, R::Error(GuestError::ClientFailed { message, .. }) if message.starts_with("client c1 is already running")),
            "{again:?}"
        );
        let r = p.report(&Request::ClientReport { id: "c1".into() });
        assert!(r.alive && !r.exited, "{r:?}");
        let R::Client(r) = p.stop("c1", 3000) else {
            panic!("no report")
        };
        assert_eq!(r.state.as_deref(), Some("exited"), "{r:?}");
        assert_eq!(r.detail_str("close"), Some("ok"));
        assert_eq!(r.exit_code, Some(0));
        assert!(r.exited && !r.alive);
        // Without `wait` the reply comes at once, without a report.
        let r = p.client_start("c1", ClientKind::IdleOpen, false);
        assert!(matches!(r, R::Started { report: None, .. }), "{r:?}");
        assert!(matches!(p.stop("c1", 3000), R::Client(_)));

        // A client that fails its setup: the error carries its report with the exit code.
        let r = p.client_start("f", ClientKind::Fbdev, true);
        let R::Error(GuestError::ClientFailed {
            message,
            report: Some(failed),
        }) = r
        else {
            panic!("{r:?}")
        };
        assert_eq!(message, "client f failed: no framebuffer");
        assert_eq!(failed.state.as_deref(), Some("failed"));
        assert_eq!(failed.exit_code, Some(1));

        // A client that does not stop: "hung", with what /proc says of it.
        let R::Started { pid, .. } = p.client_start("h", ClientKind::Kms, true) else {
            panic!("kms did not start")
        };
        let t = Instant::now();
        let R::Client(r) = p.stop("h", 300) else {
            panic!("no report")
        };
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(r.state.as_deref(), Some("hung"), "{r:?}");
        assert!(r.alive && !r.exited);
        assert_eq!(r.details["waited_ms"], 300);
        assert!(r.detail_str("proc_state").is_some(), "{r:?}");
        assert!(r.details.contains_key("wchan") && r.details.contains_key("stack"));
        // SAFETY: plain kill(2) of the fake client (a child of this test process).
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let R::Client(r) = p.stop("h", 3000) else {
            panic!("no report")
        };
        assert_eq!(r.state.as_deref(), Some("killed"));
        assert_eq!(r.exit_signal.as_deref(), Some("SIGKILL"));
    }

    #[test]
    fn shell_relays_a_pty_then_returns_to_requests() {
        let mut p = Peer::new("shell-pty");
        p.conn.write_all(b"@shell 30 100\n").unwrap();
        p.conn.write_all(b"echo hi-$((6*7)); stty size\n").unwrap();
        let mut seen = Vec::new();
        let mut read_until = |p: &mut Peer, wanted: &[&[u8]]| {
            let mut buf = [0u8; 4096];
            while !wanted
                .iter()
                .all(|s| seen.windows(s.len()).any(|w| w == *s))
            {
                let n = p
                    .reader
                    .read(&mut buf)
                    .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&seen)));
                assert!(n > 0, "agent closed: {}", String::from_utf8_lossy(&seen));
                seen.extend_from_slice(&buf[..n]);
            }
        };
        read_until(&mut p, &[b"hi-42", b"30 100"]);
        p.conn.write_all(b"exit 5\n").unwrap();
        read_until(&mut p, &[b"\x1evanish-shell-exit 5\n"]);
        // The host ends the relay with one line, which the agent drops.
        p.conn.write_all(b"\n").unwrap();
        assert!(matches!(p.ask(&Request::Status), R::Status { .. }));
    }

    #[test]
    fn ends_when_the_input_closes() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let w = theirs.try_clone().unwrap();
        let h = thread::spawn(move || serve(theirs, w, Config::default()));
        let mut ours = ours;
        let request = protocol::encode_request(&Request::Status);
        ours.write_all(format!("{request}\n{request}").as_bytes())
            .unwrap();
        ours.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(h.join().unwrap().is_ok());
        let mut s = String::new();
        ours.read_to_string(&mut s).unwrap();
        // One reply: an unterminated last line is not a request.
        assert_eq!(s.lines().count(), 1, "{s:?}");
        assert!(
            matches!(protocol::decode_reply(&s), Ok(R::Status { .. })),
            "{s:?}"
        );
    }

    #[test]
    fn report_puts_the_agents_view_in_the_typed_fields() {
        let dir = std::env::temp_dir().join(format!("vanish-agent-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let status_path = dir.join("s.json");
        std::fs::write(
            &status_path,
            r#"{"kind":"kms","pid":42,"state":"running","exited":false,"frames":9,"signals":{"SIGBUS":1},"last_error":"a\ud83d\ude00b"}"#,
        )
        .unwrap();
        let mut c = ClientProc {
            pid: 43,
            status_path,
            exit: None,
            exec: None,
        };
        let r = report("c1", &c);
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"id":"c1","pid":43,"kind":"kms","state":"running","alive":true,"exited":false,"exit_code":null,"exit_signal":null,"frames":9,"last_error":"a😀b","signals":{"SIGBUS":1}}"#
        );
        // A \u surrogate pair decodes to its one character (the hand-written decoder before
        // serde_json made two U+FFFD of it).
        assert_eq!(r.detail_str("last_error"), Some("a\u{1f600}b"));
        assert_eq!(r.counter("signals", "SIGBUS"), 1);
        c.exit = Some(Exit::Signal(libc::SIGBUS));
        let r = report("c1", &c);
        assert_eq!(r.state.as_deref(), Some("killed"));
        assert_eq!(r.exit_signal.as_deref(), Some("SIGBUS"));
        assert!(r.exited && !r.alive);
        c.exit = Some(Exit::Code(2));
        assert_eq!(report("c1", &c).state.as_deref(), Some("died"));
        std::fs::remove_dir_all(&dir).unwrap();
        let r = report("c1", &c);
        assert!(r
            .detail_str("status_file")
            .is_some_and(|s| s.starts_with("unreadable")));
        assert_eq!((r.kind, r.exit_code), (None, Some(2)));
        let st = proc_file(std::process::id() as i32, "stat").unwrap();
        assert!(st.len() > 3 && st.as_bytes()[1] == b' ', "{st}");
    }
}
