//! Batched socket sends through io_uring (cargo feature `uring`): the sends of several
//! sockets submitted in one `io_uring_enter`, each completed before the call returns.
//!
//! The batch is synchronous, so the buffers are plain borrows: nothing is in flight
//! between two calls. Each loop owns its ring (closing the loop closes it). Each send carries
//! MSG_DONTWAIT, which makes io_uring complete a send that would block with -EAGAIN
//! instead of arming a poll (the request is flagged no-wait), and a partial send comes back
//! as its count: the results are those send(2) would give, in one syscall for all.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Once;

use io_uring::{opcode, types, IoUring, Probe};
use nix::errno::Errno;
use nix::libc;

/// Sends per submission (the completion queue holds twice as many, so it never overflows).
const ENTRIES: u32 = 256;

/// Forks so far of this process's line (counted in the child): a forked child shares its
/// parent's ring memory, so it makes its own.
static FORKS: AtomicU32 = AtomicU32::new(0);
static AT_FORK: Once = Once::new();

extern "C" fn forked_child() {
    FORKS.fetch_add(1, Relaxed);
}

struct Ring {
    ring: IoUring,
    /// FORKS when it was made.
    forks: u32,
}

/// A loop's ring, opened with the loop (like its epoll fd) and closed with it.
#[derive(Default)]
pub(crate) struct Uring(Slot);

#[derive(Default)]
enum Slot {
    #[default]
    Untried,
    /// No io_uring here (old kernel, `kernel.io_uring_disabled`, a seccomp sandbox) or it
    /// was turned off with FERROLOOP_URING=0: sends go through send(2).
    Unavailable,
    Ready(Box<Ring>),
}

fn open() -> Option<Ring> {
    if std::env::var_os("FERROLOOP_URING").is_some_and(|v| v == "0") {
        return None;
    }
    AT_FORK.call_once(|| {
        // SAFETY: registers a handler that only bumps an atomic, which is async-signal-safe
        // as a fork's child handler must be; it stays valid for the process's life.
        // A failure (ENOMEM) leaves forks undetected, as they were before this call.
        let _ = unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
    });
    let ring = IoUring::new(ENTRIES).ok()?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).ok()?;
    // IORING_OP_SEND is Linux 5.6.
    probe.is_supported(opcode::Send::CODE).then(|| Ring {
        ring,
        forks: FORKS.load(Relaxed),
    })
}

impl Uring {
    pub(crate) fn open() -> Self {
        let mut ring = Uring::default();
        ring.available();
        ring
    }

    /// Whether batched sends are available (opening the ring again in a forked child).
    pub(crate) fn available(&mut self) -> bool {
        if let Slot::Ready(r) = &self.0 {
            if r.forks == FORKS.load(Relaxed) {
                return true;
            }
            // A fork's child: its copy of the parent's ring is dropped (its own mapping
            // and fd) and a fresh one made.
            self.0 = Slot::Untried;
        }
        if let Slot::Untried = &self.0 {
            self.0 = open().map_or(Slot::Unavailable, |r| Slot::Ready(Box::new(r)));
        }
        matches!(&self.0, Slot::Ready(_))
    }

    /// Sends `bufs[i].1` on socket `bufs[i].0`, as `send(fd, buf, MSG_NOSIGNAL |
    /// MSG_DONTWAIT)` would, into `out[i]`, for the first n of them, n returned: all, or 0
    /// when io_uring is not available, or fewer if the ring failed. The caller sends the
    /// rest itself.
    pub(crate) fn send_all(
        &mut self,
        bufs: &[(RawFd, &[u8])],
        out: &mut Vec<Result<usize, Errno>>,
    ) -> usize {
        let Slot::Ready(r) = &mut self.0 else {
            return 0;
        };
        out.clear();
        out.resize(bufs.len(), Ok(0));
        let mut done = 0;
        for part in bufs.chunks(ENTRIES as usize) {
            if send_chunk(&mut r.ring, part, &mut out[done..]).is_err() {
                // The kernel refused a submission before taking any of it (see below).
                // The ring is leaked, not closed: its unconsumed entries are never read,
                // as nothing enters it again.
                if let Slot::Ready(r) = std::mem::replace(&mut self.0, Slot::Unavailable) {
                    std::mem::forget(r);
                }
                break;
            }
            done += part.len();
        }
        done
    }
}

/// One submission of at most ENTRIES sends, with every completion reaped before it
/// returns. Err: the kernel took none of them (io_uring_enter fails only when it submitted
/// nothing; once a request is taken, it reports the count instead).
fn send_chunk(
    ring: &mut IoUring,
    bufs: &[(RawFd, &[u8])],
    out: &mut [Result<usize, Errno>],
) -> Result<(), Errno> {
    let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
    {
        let mut sq = ring.submission();
        for (i, (fd, buf)) in bufs.iter().enumerate() {
            let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
            let entry = opcode::Send::new(types::Fd(*fd), buf.as_ptr(), len)
                .flags(flags)
                .build()
                .user_data(i as u64);
            // SAFETY: the entry points into `buf`, borrowed from our caller for the whole
            // call, and this function does not return before the kernel has completed
            // every entry it took (the loop below reaps them all); the queue has room, as
            // it is empty on entry (each call drains it) and `bufs` holds at most ENTRIES.
            if unsafe { sq.push(&entry) }.is_err() {
                return Err(Errno::EOVERFLOW);
            }
        }
    }
    let mut left = bufs.len();
    let mut taken = false;
    while left > 0 {
        match ring.submit_and_wait(left) {
            Ok(_) => taken = true,
            // Interrupted or short of resources: the entries not taken stay queued and
            // the next enter submits them.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                ) => {}
            Err(e) if !taken && ring.submission().len() == bufs.len() => {
                return Err(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)));
            }
            // Some entries were taken: their buffers stay borrowed until they complete,
            // so keep waiting rather than return.
            Err(_) => {}
        }
        for cqe in ring.completion() {
            let res = cqe.result();
            let Some(slot) = usize::try_from(cqe.user_data())
                .ok()
                .and_then(|i| out.get_mut(i))
            else {
                continue;
            };
            *slot = if res >= 0 {
                Ok(res as usize)
            } else {
                Err(Errno::from_raw(-res))
            };
            left = left.saturating_sub(1);
        }
    }
    Ok(())
}
