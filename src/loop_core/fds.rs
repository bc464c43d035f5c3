//! The fd registry: which handle reads and which writes each fd watched by
//! `add_reader`/`add_writer` and the socket calls, kept in step with the poller.
//!
//! A socket call (`sock_recv`, …) that is an fd's only watcher is registered one-shot:
//! the kernel disables the registration when it reports the event, so when the call
//! finishes the registration is left in place, disabled ("parked"), and the next call
//! re-arms it with one `epoll_ctl(MOD)` instead of an `ADD` and a `DEL` per call. A
//! disabled registration never reports anything, so one that outlives its socket (a
//! closed fd whose file lives on through a `dup`) cannot wake the loop. An fd whose last
//! `add_reader`/`add_writer` watcher is removed is parked the same way (one `MOD` that
//! disables it), so that watching it again costs a `MOD`, not a `DEL` and an `ADD`.

use rustc_hash::FxHashMap;
use std::os::fd::RawFd;

use pyo3::prelude::*;

use super::handles::Handle;
use crate::poller::Poller;

#[derive(Default)]
pub(crate) struct FdEntry {
    pub(crate) reader: Option<Py<Handle>>,
    pub(crate) writer: Option<Py<Handle>>,
    /// The object the fd was registered with (selectors' `key.fileobj`: replaced when
    /// the interest changes), by which a closed socket is still found; None for the
    /// socket calls, which register the fd number as asyncio's do.
    fileobj: Option<Py<PyAny>>,
    /// The registration is one-shot (a socket call's read, alone on the fd).
    oneshot: bool,
    /// No watcher, but the poller holds a disabled one-shot registration.
    parked: bool,
}

#[derive(Default)]
pub(crate) struct Fds {
    map: FxHashMap<RawFd, FdEntry>,
    /// How many entries are parked.
    parked: usize,
}

/// What a registry change released: the watcher it replaced or removed, and a
/// registration object. Both are dropped by the caller once no borrow is held (a
/// socket's finalizer may run).
pub(crate) type Released = (Option<Py<Handle>>, Option<Py<PyAny>>);

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    Read,
    Write,
}

impl FdEntry {
    fn slot(&mut self, dir: Dir) -> &mut Option<Py<Handle>> {
        match dir {
            Dir::Read => &mut self.reader,
            Dir::Write => &mut self.writer,
        }
    }

    /// Whether `dir` is watched.
    pub(crate) fn has(&self, dir: Dir) -> bool {
        match dir {
            Dir::Read => self.reader.is_some(),
            Dir::Write => self.writer.is_some(),
        }
    }

    fn interest(&self) -> (bool, bool) {
        (self.reader.is_some(), self.writer.is_some())
    }
}

impl Fds {
    /// Whether no fd has a watcher (parked registrations wait for nothing).
    pub(crate) fn is_empty(&self) -> bool {
        self.map.len() == self.parked
    }

    pub(crate) fn get(&self, fd: RawFd) -> Option<&FdEntry> {
        self.map.get(&fd)
    }

    /// The fd registered with `fileobj` itself (selectors' exhaustive search, for an
    /// object whose `fileno()` no longer says: a closed socket).
    pub(crate) fn find_fileobj(&self, fileobj: &Bound<'_, PyAny>) -> Option<RawFd> {
        self.map.iter().find_map(|(fd, e)| {
            e.fileobj
                .as_ref()
                .is_some_and(|f| f.as_ptr() == fileobj.as_ptr())
                .then_some(*fd)
        })
    }

    /// Installs `handle` for `dir`, returning what it replaces. `sock_call`: the
    /// watcher is a socket call (registered one-shot when it reads alone). The poller
    /// is updated first, so a failing `epoll_ctl` leaves the registry untouched.
    pub(crate) fn add(
        &mut self,
        poller: &Poller,
        fd: RawFd,
        dir: Dir,
        handle: Py<Handle>,
        sock_call: bool,
        fileobj: Option<Py<PyAny>>,
    ) -> nix::Result<Released> {
        let entry = self.map.get(&fd);
        let known = entry.is_some();
        let (mut r, mut w) = entry.map_or((false, false), FdEntry::interest);
        match dir {
            Dir::Read => r = true,
            Dir::Write => w = true,
        }
        let oneshot = sock_call && dir == Dir::Read && !w;
        // A known fd gets MOD, which falls back to ADD when the registration is gone
        // (the fd was closed and its number reused since: the new file is watched,
        // where selectors' modify() with unchanged events makes no system call and the
        // watcher never runs).
        poller.set_interest(fd, known, r, w, oneshot)?;
        let entry = self.map.entry(fd).or_default();
        entry.oneshot = oneshot;
        if std::mem::take(&mut entry.parked) {
            self.parked -= 1;
        }
        // selectors' modify() keeps the key's fileobj unless the events change.
        let new_interest = entry.slot(dir).is_none();
        let old_fileobj = if new_interest || !known {
            std::mem::replace(&mut entry.fileobj, fileobj)
        } else {
            fileobj
        };
        Ok((entry.slot(dir).replace(handle), old_fileobj))
    }

    /// Replaces the watcher of `dir`, which must be there, without a system call (for
    /// a closed socket, whose fd number is stale). Returns the replaced handle.
    pub(crate) fn replace(
        &mut self,
        fd: RawFd,
        dir: Dir,
        handle: Py<Handle>,
    ) -> Option<Py<Handle>> {
        let entry = self.map.get_mut(&fd)?;
        entry.oneshot = false;
        entry.slot(dir).replace(handle)
    }

    /// Re-enables the one-shot read registration of `fd` (its reader is still waiting).
    pub(crate) fn rearm(&mut self, poller: &Poller, fd: RawFd) -> nix::Result<()> {
        match self.map.get(&fd) {
            Some(e) if e.oneshot && e.reader.is_some() => {
                let (r, w) = e.interest();
                poller.set_interest(fd, true, r, w, true)
            }
            _ => Ok(()),
        }
    }

    /// A socket call's read finished: its reader goes. A one-shot registration has
    /// reported its event and is disabled by now: it stays, parked, with no syscall.
    /// Returns the removed reader.
    pub(crate) fn park_reader(&mut self, poller: &Poller, fd: RawFd) -> nix::Result<Released> {
        let Some(entry) = self.map.get_mut(&fd) else {
            return Ok((None, None));
        };
        if !entry.oneshot || entry.writer.is_some() {
            return self.remove(poller, fd, Dir::Read, None);
        }
        if !entry.parked {
            entry.parked = true;
            self.parked += 1;
        }
        Ok((entry.reader.take(), None))
    }

    /// Removes the handle for `dir`, if any, and returns what was released. `fileobj`:
    /// what the caller named the fd by, the registration's object from now on if
    /// another direction stays watched (selectors re-registers it).
    ///
    /// The last watcher's removal parks the fd instead of deleting its registration: it
    /// stays in epoll, disabled (one-shot with no events: at most one error or hang-up
    /// can still be reported, which finds no watcher), so watching it again is one
    /// `epoll_ctl(MOD)` rather than a `DEL` now and an `ADD` then.
    pub(crate) fn remove(
        &mut self,
        poller: &Poller,
        fd: RawFd,
        dir: Dir,
        fileobj: Option<Py<PyAny>>,
    ) -> nix::Result<Released> {
        let Some(entry) = self.map.get_mut(&fd) else {
            return Ok((None, fileobj));
        };
        let Some(old) = entry.slot(dir).take() else {
            // Not watched for `dir` (a parked fd included): nothing changes.
            return Ok((None, fileobj));
        };
        let (r, w) = entry.interest();
        entry.oneshot = false;
        if !r && !w {
            poller.disable(fd)?;
            entry.parked = true;
            self.parked += 1;
            drop(fileobj);
            return Ok((Some(old), entry.fileobj.take()));
        }
        let old_fileobj = match fileobj {
            Some(f) => entry.fileobj.replace(f),
            None => None,
        };
        poller.set_interest(fd, true, r, w, false)?;
        Ok((Some(old), old_fileobj))
    }

    /// The fd is about to be closed by its owner (a transport closing its socket): a
    /// parked registration is forgotten without a system call. Closing the fd takes it
    /// out of epoll (or, if a `dup` keeps the file open, leaves it disabled, reporting
    /// nothing), so the next file with this number is registered with one `ADD` rather
    /// than a `MOD` that fails first. An fd that still has a watcher is left alone.
    pub(crate) fn forget_parked(&mut self, fd: RawFd) -> Option<FdEntry> {
        if !self.map.get(&fd).is_some_and(|e| e.parked) {
            return None;
        }
        self.parked -= 1;
        self.map.remove(&fd)
    }

    /// Empties the registry; the caller drops what it returns once no borrow is held.
    pub(crate) fn take_all(&mut self) -> Vec<FdEntry> {
        self.parked = 0;
        std::mem::take(&mut self.map).into_values().collect()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Py<Handle>> {
        self.map
            .values()
            .flat_map(|e| [e.reader.as_ref(), e.writer.as_ref()])
            .flatten()
    }

    /// The registration objects, for the collector.
    pub(crate) fn fileobjs(&self) -> impl Iterator<Item = &Py<PyAny>> {
        self.map.values().filter_map(|e| e.fileobj.as_ref())
    }
}
