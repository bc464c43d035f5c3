//! The fd registry: which handle reads and which writes each fd watched by
//! `add_reader`/`add_writer`, kept in step with the poller's interest set.

use std::collections::HashMap;
use std::os::fd::RawFd;

use pyo3::prelude::*;

use super::handles::Handle;
use crate::poller::Poller;

#[derive(Default)]
pub(crate) struct FdEntry {
    pub(crate) reader: Option<Py<Handle>>,
    pub(crate) writer: Option<Py<Handle>>,
}

#[derive(Default)]
pub(crate) struct Fds {
    map: HashMap<RawFd, FdEntry>,
}

#[derive(Clone, Copy)]
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
    pub(crate) fn add(
        &mut self,
        poller: &Poller,
        fd: RawFd,
        dir: Dir,
        handle: Py<Handle>,
    ) -> nix::Result<Option<Py<Handle>>> {
        let known = self.map.contains_key(&fd);
        let (mut r, mut w) = self
            .map
            .get(&fd)
            .map_or((false, false), |e| (e.reader.is_some(), e.writer.is_some()));
        match dir {
            Dir::Read => r = true,
            Dir::Write => w = true,
        }
        poller.set_interest(fd, known, r, w)?;
        Ok(self.map.entry(fd).or_default().slot(dir).replace(handle))
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
        let Some(old) = entry.slot(dir).take() else {
            return Ok(None);
        };
        let (r, w) = (entry.reader.is_some(), entry.writer.is_some());
        if !r && !w {
            self.map.remove(&fd);
        }
        poller.set_interest(fd, true, r, w)?;
        Ok(Some(old))
    }

    pub(crate) fn take_all(&mut self) -> Vec<Py<Handle>> {
        std::mem::take(&mut self.map)
            .into_values()
            .flat_map(|e| [e.reader, e.writer])
            .flatten()
            .collect()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Py<Handle>> {
        self.map
            .values()
            .flat_map(|e| [e.reader.as_ref(), e.writer.as_ref()])
            .flatten()
    }
}
