//! The OS readiness poller: level-triggered epoll plus an eventfd that wakes it.
//!
//! Level-triggered on purpose: asyncio's `add_reader` calls its callback on every loop
//! iteration while the fd stays readable; mio's edge-triggered epoll would need an extra
//! `epoll_ctl` per event to give the same contract.

use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

/// epoll user data that marks the waker's eventfd (fds are never negative).
pub const WAKER_TOKEN: u64 = u64::MAX;

/// The parts of the poller that a waiting thread and waking threads share.
pub struct Poller {
    epoll: Epoll,
    waker: EventFd,
    /// True while the loop thread is (about to be) blocked in `epoll_wait`.
    polling: AtomicBool,
    /// True once the eventfd has been written and not yet drained: one write wakes.
    woken: AtomicBool,
}

/// What one `wait` saw.
pub enum Waited {
    Events(usize),
    /// A signal interrupted the wait (EINTR): the caller runs Python's signal handlers.
    Interrupted,
}

impl Poller {
    pub fn new() -> nix::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let waker = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        epoll.add(
            waker.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, WAKER_TOKEN),
        )?;
        Ok(Self {
            epoll,
            waker,
            polling: AtomicBool::new(false),
            woken: AtomicBool::new(false),
        })
    }

    /// Sets the fd's interest; `known` says whether epoll already holds it. `oneshot`:
    /// the kernel disables the registration once it has reported an event.
    pub fn set_interest(
        &self,
        fd: RawFd,
        known: bool,
        readable: bool,
        writable: bool,
        oneshot: bool,
    ) -> nix::Result<()> {
        // SAFETY: the fd is only borrowed for the duration of the epoll_ctl call; epoll
        // keeps no Rust reference to it, and a stale fd makes the call fail, not misbehave.
        let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
        if !readable && !writable {
            return match self.epoll.delete(bfd) {
                // Closed (or closed and reused) fds already left the epoll set.
                Ok(()) | Err(Errno::ENOENT) | Err(Errno::EBADF) => Ok(()),
                Err(e) => Err(e),
            };
        }
        let mut flags = EpollFlags::empty();
        if readable {
            flags |= EpollFlags::EPOLLIN;
        }
        if writable {
            flags |= EpollFlags::EPOLLOUT;
        }
        if oneshot {
            flags |= EpollFlags::EPOLLONESHOT;
        }
        let event = EpollEvent::new(flags, fd as u64);
        if known {
            match self.epoll.modify(bfd, &mut event.clone()) {
                // The fd was closed and reopened behind our back: register it afresh.
                Err(Errno::ENOENT) => self.epoll.add(bfd, event),
                other => other,
            }
        } else {
            match self.epoll.add(bfd, event) {
                Err(Errno::EEXIST) => self.epoll.modify(bfd, &mut event.clone()),
                other => other,
            }
        }
    }

    /// Disables the fd's registration without removing it (one-shot, no events: the
    /// kernel can report at most one error or hang-up, then nothing). Nothing to do if
    /// the fd is gone from epoll (closed, or closed and reused).
    pub fn disable(&self, fd: RawFd) -> nix::Result<()> {
        // SAFETY: as in set_interest: borrowed for the epoll_ctl call only.
        let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
        let mut event = EpollEvent::new(EpollFlags::EPOLLONESHOT, fd as u64);
        match self.epoll.modify(bfd, &mut event) {
            Ok(()) | Err(Errno::ENOENT) | Err(Errno::EBADF) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Blocks for events; call without the GIL when the timeout is not zero.
    pub fn wait(
        &self,
        events: &mut [EpollEvent],
        timeout: Option<Duration>,
    ) -> nix::Result<Waited> {
        let timeout = match timeout {
            None => EpollTimeout::NONE,
            // Round up, as CPython's select.epoll does: never wake before a deadline.
            Some(d) => {
                let ms = d.as_nanos().div_ceil(1_000_000);
                EpollTimeout::try_from(ms.min(i32::MAX as u128)).unwrap_or(EpollTimeout::MAX)
            }
        };
        match self.epoll.wait(events, timeout) {
            Ok(n) => Ok(Waited::Events(n)),
            Err(Errno::EINTR) => Ok(Waited::Interrupted),
            Err(e) => Err(e),
        }
    }

    pub fn set_polling(&self, on: bool) {
        self.polling.store(on, Ordering::SeqCst);
    }

    /// Wakes a blocked `wait`; a no-op when the loop is not polling or already woken.
    pub fn wake(&self) {
        // The load first: in a burst from other threads the eventfd is written once, and
        // the later calls only read the flag (a swap would write its cache line each time).
        if self.polling.load(Ordering::SeqCst)
            && !self.woken.load(Ordering::SeqCst)
            && !self.woken.swap(true, Ordering::SeqCst)
        {
            let _ = self.waker.write(1);
        }
    }

    /// Wakes unconditionally (asyncio's `_write_to_self`).
    pub fn wake_always(&self) {
        self.woken.store(true, Ordering::SeqCst);
        let _ = self.waker.write(1);
    }

    /// Resets the eventfd after the waker's event was seen.
    pub fn drain_waker(&self) {
        let _ = self.waker.read();
        self.woken.store(false, Ordering::SeqCst);
    }
}
