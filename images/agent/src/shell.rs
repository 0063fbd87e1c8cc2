//! `@shell ROWS COLS`: an interactive `sh -i` on a pty, relayed raw over the agent's port
//! until the shell exits. Then the agent writes [`END_MARKER`] with the shell's status and a
//! newline, and drops the next line from the host (the host sends one to end the relay: the
//! agent may be waiting for input) before it goes back to serving requests.

use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// Written after the shell's last output, followed by its status and '\n'.
pub const END_MARKER: &[u8] = b"\x1evanish-shell-exit ";

fn send<W: Write>(out: &Mutex<W>, bytes: &[u8]) -> io::Result<()> {
    let mut w = out.lock().unwrap_or_else(|p| p.into_inner());
    w.write_all(bytes)?;
    w.flush()
}

/// Parses `shell [ROWS COLS]`.
pub fn parse(words: &[&str]) -> Option<(u16, u16)> {
    match words {
        ["shell"] => Some((24, 80)),
        ["shell", r, c] => Some((r.parse().ok()?, c.parse().ok()?)),
        _ => None,
    }
}

/// Runs the shell and relays until it exits (or `input` ends).
pub fn relay<R: BufRead, W: Write + Send + 'static>(
    input: &mut R,
    out: &Arc<Mutex<W>>,
    shell: &Path,
    rows: u16,
    cols: u16,
) -> io::Result<()> {
    let (mut master, mut slave) = (0, 0);
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty with valid out-pointers and a valid winsize.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        send(out, format!("vanish-agent: openpty: {e}\n").as_bytes())?;
        send(out, END_MARKER)?;
        return send(out, b"127\n");
    }
    // SAFETY: openpty returned two fresh fds that we now own.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut cmd = Command::new(shell);
    cmd.arg("-i")
        .env("TERM", "vt100")
        .env("PS1", "vanish# ")
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave))
        .current_dir("/");
    // SAFETY: only async-signal-safe calls (setsid, ioctl) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = cmd.spawn();
    // The Command holds the slave's fds: the master reads EOF only once they are closed.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            send(
                out,
                format!("vanish-agent: cannot run {}: {e}\n", shell.display()).as_bytes(),
            )?;
            send(out, END_MARKER)?;
            return send(out, b"127\n");
        }
    };
    let pid = child.id() as i32;
    let mut reader = File::from(master.try_clone()?);
    let mut writer = File::from(master);
    let done = Arc::new(AtomicBool::new(false));
    let pump = {
        let out = Arc::clone(out);
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let mut buf = vec![0u8; 16384];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if send(&out, &buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // EIO: every slave fd is closed (the shell and its children are gone).
                    Err(_) => break,
                }
            }
            let code = match child.wait() {
                Ok(st) => st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)),
                Err(_) => 255,
            };
            done.store(true, Ordering::SeqCst);
            let _ = send(&out, END_MARKER);
            let _ = send(&out, format!("{code}\n").as_bytes());
        })
    };
    loop {
        let chunk = match input.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            // The host went away: hang the shell up.
            // SAFETY: plain kill(2) of our child's session.
            unsafe { libc::kill(-pid, libc::SIGHUP) };
            break;
        }
        if done.load(Ordering::SeqCst) {
            // After the end marker the host sends one line (dropped); what follows is the line
            // protocol again.
            match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    input.consume(i + 1);
                    break;
                }
                None => {
                    let n = chunk.len();
                    input.consume(n);
                    continue;
                }
            }
        }
        let _ = writer.write_all(chunk);
        let n = chunk.len();
        input.consume(n);
    }
    drop(writer);
    let _ = pump.join();
    Ok(())
}
