//! Names for errno values and signals, as the status JSON and the host's reports spell them,
//! and opening a device the way every client and bench program does.

use std::io;

/// The errno of the last failed libc call.
pub fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `ENODEV` for 19 and so on; `E<n>` for numbers outside the table.
pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::ECHILD => "ECHILD",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::ENOSPC => "ENOSPC",
        libc::EPIPE => "EPIPE",
        libc::ERANGE => "ERANGE",
        libc::EDEADLK => "EDEADLK",
        libc::ENOSYS => "ENOSYS",
        libc::ENOLINK => "ENOLINK",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESHUTDOWN => "ESHUTDOWN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECANCELED => "ECANCELED",
        libc::ENOTCONN => "ENOTCONN",
        libc::EHWPOISON => "EHWPOISON",
        _ => return format!("E{e}"),
    };
    name.to_string()
}

/// `ENODEV (No such device)`.
pub fn errno_text(e: i32) -> String {
    let msg = io::Error::from_raw_os_error(e).to_string();
    let msg = msg.split(" (os error").next().unwrap_or_default();
    format!("{} ({msg})", errno_name(e))
}

/// `SIGBUS` for 7 and so on; `SIG<n>` for numbers outside the table.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGCONT => "SIGCONT",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("SIG{sig}"),
    };
    name.to_string()
}

/// Opens `device` read-write (close-on-exec); the error names the device and the errno.
pub fn open_rw(device: &str) -> Result<std::os::fd::RawFd, String> {
    let path = std::ffi::CString::new(device).map_err(|_| format!("bad device path {device:?}"))?;
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("open {device}: {}", errno_text(errno())));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_devices_or_says_why_not() {
        let fd = open_rw("/dev/null").unwrap();
        // SAFETY: our fd.
        assert_eq!(unsafe { libc::close(fd) }, 0);
        assert_eq!(
            open_rw("/nonexistent/card0"),
            Err("open /nonexistent/card0: ENOENT (No such file or directory)".into())
        );
        assert!(open_rw("a\0b").is_err());
    }

    #[test]
    fn names() {
        assert_eq!(errno_name(19), "ENODEV");
        assert_eq!(errno_name(5), "EIO");
        assert_eq!(errno_name(4095), "E4095");
        assert_eq!(errno_text(libc::ENODEV), "ENODEV (No such device)");
        assert_eq!(signal_name(7), "SIGBUS");
        assert_eq!(signal_name(11), "SIGSEGV");
        assert_eq!(signal_name(15), "SIGTERM");
    }
}
