//! The fd registry: which handle reads and which writes each fd watched by
//! `add_reader`/`add_writer`, kept in step with the poller's interest set.

use std::collections::HashMap;
use std::os::fd::RawFd;

use pyo3::prelude::*;
use pyo3::types::PyWeakrefReference;

use super::handles::Handle;
use crate::poller::Poller;

#[derive(Default)]
pub(crate) struct FdEntry {
    pub(crate) reader: Option<Py<Handle>>,
    pub(crate) writer: Option<Py<Handle>>,
    /// Reads the poller still watches after a socket call finished (a weak reference
    /// to its socket): the next call on the same socket takes them over without two
    /// epoll_ctl calls. Anything else resynchronises the poller first.
    parked: Option<Py<PyAny>>,
}

#[derive(Default)]
pub(crate) struct Fds {
    map: HashMap<RawFd, FdEntry>,
}

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
}

impl Fds {
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub(crate) fn get(&self, fd: RawFd) -> Option<&FdEntry> {
        self.map.get(&fd)
    }

    /// Installs `handle` for `dir`, returning the handle it replaces. The poller is
    /// updated first, so a failing `epoll_ctl` leaves the registry untouched.
    /// `owner`, when given, is the socket a socket call watches for: it may take over
    /// reads parked by an earlier call on the same socket object.
    pub(crate) fn add(
        &mut self,
        py: Python<'_>,
        poller: &Poller,
        fd: RawFd,
        dir: Dir,
        handle: Py<Handle>,
        owner: Option<&Bound<'_, PyAny>>,
    ) -> nix::Result<Option<Py<Handle>>> {
        let entry = self.map.get(&fd);
        let known = entry.is_some();
        let (mut r, mut w) =
            entry.map_or((false, false), |e| (e.reader.is_some(), e.writer.is_some()));
        // Parked reads stay valid only for the socket object that parked them: it was
        // open on this fd then and is open on it now (its fileno() was just read), so
        // the poller still holds the registration.
        let parked = entry.and_then(|e| e.parked.as_ref());
        let same_owner = match (parked, owner) {
            (Some(weak), Some(owner)) => weak
                .bind(py)
                .cast::<PyWeakrefReference>()
                .ok()
                .and_then(|w| w.upgrade())
                .is_some_and(|o| o.is(owner)),
            _ => false,
        };
        let had = (r || (parked.is_some() && same_owner), w);
        match dir {
            Dir::Read => r = true,
            Dir::Write => w = true,
        }
        if same_owner && dir == Dir::Write {
            r = true; // the parked reads stay
        }
        if (r, w) != had || (parked.is_some() && !same_owner) || !known {
            poller.set_interest(fd, known, r, w)?;
        }
        let entry = self.map.entry(fd).or_default();
        if !(same_owner && dir == Dir::Write) {
            entry.parked = None;
        }
        Ok(entry.slot(dir).replace(handle))
    }

    /// Removes the reader, leaving the poller's interest in place for the next socket
    /// call on `owner` (see `FdEntry::parked`). Returns the removed reader.
    pub(crate) fn park_reader(&mut self, fd: RawFd, owner: Py<PyAny>) -> Option<Py<Handle>> {
        let entry = self.map.get_mut(&fd)?;
        let old = entry.reader.take();
        entry.parked = Some(owner);
        old
    }

    /// A parked fd became readable with no reader: the poller stops watching its reads.
    /// Returns what it released, for the caller to drop outside any borrow.
    pub(crate) fn unpark(&mut self, poller: &Poller, fd: RawFd) -> Option<Py<PyAny>> {
        let entry = self.map.get_mut(&fd)?;
        let parked = entry.parked.take()?;
        let (r, w) = (entry.reader.is_some(), entry.writer.is_some());
        if !r && !w {
            self.map.remove(&fd);
        }
        // The fd may be closed by now: that already took it out of the epoll set.
        let _ = poller.set_interest(fd, true, r, w);
        Some(parked)
    }

    pub(crate) fn is_parked(&self, fd: RawFd) -> bool {
        self.map.get(&fd).is_some_and(|e| e.parked.is_some())
    }

    /// Removes the handle for `dir`, if any, and returns it.
    pub(crate) fn remove(
        &mut self,
        poller: &Poller,
        fd: RawFd,
        dir: Dir,
    ) -> nix::Result<Option<Py<Handle>>> {
        let Some(entry) = self.map.get_mut(&fd) else {
            return Ok(None);
        };
        let unparked = dir == Dir::Read && entry.parked.take().is_some();
        let old = entry.slot(dir).take();
        if old.is_none() && !unparked {
            return Ok(None);
        }
        let (r, w) = (entry.reader.is_some(), entry.writer.is_some());
        if !r && !w {
            self.map.remove(&fd);
        }
        poller.set_interest(fd, true, r, w)?;
        Ok(old)
    }

    /// Empties the registry; the caller drops what it returns once no borrow is held.
    pub(crate) fn take_all(&mut self) -> Vec<FdEntry> {
        std::mem::take(&mut self.map).into_values().collect()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Py<Handle>> {
        self.map
            .values()
            .flat_map(|e| [e.reader.as_ref(), e.writer.as_ref()])
            .flatten()
    }

    pub(crate) fn parked(&self) -> impl Iterator<Item = &Py<PyAny>> {
        self.map.values().filter_map(|e| e.parked.as_ref())
    }
}
