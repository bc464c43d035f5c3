//! Child processes: signals through a pidfd, and reaping (waitid(2)), with the return
//! code `subprocess` gives (the exit status, or minus the signal that killed it).

use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::libc;

/// What a `waitid` said about a child.
pub(crate) enum Child {
    /// Still running (or stopped).
    Running,
    /// Exited: its return code.
    Exited(i32),
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`: no pid is named, so a recycled pid can
/// never be hit.
pub(crate) fn pidfd_send_signal(pidfd: RawFd, sig: libc::c_int) -> Result<(), Errno> {
    // SAFETY: a plain syscall on an fd we own; a NULL siginfo asks the kernel to fill it
    // in as kill(2) does.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// `waitid(which, id, WEXITED | WNOHANG | extra)`: whether the child exited, and its
/// return code. `extra` is `WNOWAIT` to look without reaping.
fn waitid(which: libc::idtype_t, id: libc::id_t, extra: libc::c_int) -> Result<Child, Errno> {
    // SAFETY: all-zero bytes are a valid siginfo_t (si_pid 0 means "no child changed").
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `info` is a writable siginfo_t.
        let r = unsafe { libc::waitid(which, id, &mut info, libc::WEXITED | extra) };
        if r == 0 {
            break;
        }
        match Errno::last() {
            Errno::EINTR => continue,
            e => return Err(e),
        }
    }
    // SAFETY: waitid filled `info` for a child event (or left it zeroed).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(Child::Running);
    }
    Ok(Child::Exited(match info.si_code {
        libc::CLD_EXITED => status,
        // Killed or dumped: as subprocess reports it, minus the signal.
        _ => -status,
    }))
}

/// Reaps the child of `pidfd` if it exited (no pid is named: never another child).
pub(crate) fn reap_pidfd(pidfd: RawFd) -> Result<Child, Errno> {
    waitid(libc::P_PIDFD, pidfd as libc::id_t, libc::WNOHANG)
}

/// Reaps child `pid` if it exited (the fallback without pidfds: the caller knows the
/// pid is still its unreaped child, so it cannot have been recycled).
pub(crate) fn reap_pid(pid: libc::pid_t) -> Result<Child, Errno> {
    waitid(libc::P_PID, pid as libc::id_t, libc::WNOHANG)
}

/// Blocks until child `pid` exits, leaving it unreaped (`WNOWAIT`: the pid stays ours,
/// so signals sent meanwhile cannot reach a recycled one). Call without the GIL.
pub(crate) fn wait_exit_unreaped(pid: libc::pid_t) -> Result<(), Errno> {
    waitid(libc::P_PID, pid as libc::id_t, libc::WNOWAIT).map(drop)
}

/// Blocks until child `pid` exits, and reaps it. Call without the GIL.
pub(crate) fn wait_and_reap(pid: libc::pid_t) -> Result<Child, Errno> {
    waitid(libc::P_PID, pid as libc::id_t, 0)
}
