//! `SubprocessTransportCore`: the native half of ferroloop's subprocess transport, with
//! the semantics of asyncio's `base_subprocess.BaseSubprocessTransport` — the child's
//! pipes (`subprocess/pipes.rs`), its exit (watched by `subprocess/watch.rs`), and the
//! protocol's callbacks in asyncio's order.
//!
//! The Python class `ferroloop._subprocess.SubprocessTransport` (an
//! `asyncio.SubprocessTransport`) starts the child with `subprocess.Popen`, as asyncio
//! does (so every Popen keyword works, and vfork/posix_spawn are used where CPython can),
//! and hands the process to this core.

use std::os::fd::OwnedFd;

use pyo3::exceptions::{PyAssertionError, PyProcessLookupError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::gil_cell::GilCell;
use crate::loop_core::LoopCore;
use crate::pyapi;

mod pipes;
mod watch;

use pipes::SubprocessPipeProto;

/// How the child's exit is watched.
enum Watch {
    /// Not (yet), or by a child watcher the program set (3.10–3.13's public API).
    None,
    /// A pidfd on the loop's poller.
    Pidfd(OwnedFd),
    /// A thread waits for the exit (no pidfds here); the loop thread reaps.
    Thread,
}

struct ProcState {
    loop_: Option<Py<LoopCore>>,
    /// The Python transport object that protocols see.
    owner: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    /// The `subprocess.Popen` object.
    proc: Option<Py<PyAny>>,
    pid: Option<i32>,
    returncode: Option<Py<PyAny>>,
    closed: bool,
    finished: bool,
    /// stdin, stdout, stderr: None if not a pipe, `Some(None)` until connected.
    pipes: [Option<Option<Py<SubprocessPipeProto>>>; 3],
    /// Callbacks made before `connection_made` was scheduled, queued after it.
    pending_calls: Option<Vec<(Py<PyAny>, Py<PyTuple>)>>,
    /// The futures of `_wait()`; None once the process exited.
    exit_waiters: Option<Vec<Py<PyAny>>>,
    watch: Watch,
    /// The pidfd registration's callback (`_child_ready`), by which it is found again.
    pidfd_ready: Option<Py<PyAny>>,
}

#[pyclass(name = "SubprocessTransportCore", module = "ferroloop._core", frozen)]
pub struct SubprocessCore {
    st: GilCell<ProcState>,
}

impl SubprocessCore {
    fn loop_<'py>(&self, py: Python<'py>) -> Option<Bound<'py, LoopCore>> {
        self.st
            .borrow(py)
            .loop_
            .as_ref()
            .map(|l| l.bind(py).clone())
    }

    fn owner(&self, py: Python<'_>) -> Py<PyAny> {
        self.st
            .borrow(py)
            .owner
            .as_ref()
            .map_or_else(|| py.None(), |o| o.clone_ref(py))
    }

    fn protocol<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.st
            .borrow(py)
            .protocol
            .as_ref()
            .map(|p| p.bind(py).clone())
    }

    /// asyncio's `_call`: a protocol callback, queued until `connection_made` is.
    fn call(&self, py: Python<'_>, cb: Bound<'_, PyAny>, args: Bound<'_, PyTuple>) -> PyResult<()> {
        {
            let mut st = self.st.borrow_mut(py);
            if let Some(pending) = &mut st.pending_calls {
                pending.push((cb.unbind(), args.unbind()));
                return Ok(());
            }
        }
        if let Some(lp) = self.loop_(py) {
            LoopCore::call_soon(&lp, &cb, &args, None)?;
        }
        Ok(())
    }

    /// A protocol method as a callback (None if the protocol is gone).
    fn protocol_method<'py>(
        &self,
        py: Python<'py>,
        name: &Bound<'py, PyString>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.protocol(py) {
            Some(p) => Ok(Some(p.getattr(name)?)),
            None => Ok(None),
        }
    }

    pub(crate) fn pipe_data_received(
        &self,
        py: Python<'_>,
        fd: i32,
        data: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        if let Some(cb) = self.protocol_method(py, pyo3::intern!(py, "pipe_data_received"))? {
            let args = PyTuple::new(py, [fd.into_pyobject(py)?.into_any(), data])?;
            self.call(py, cb, args)?;
        }
        Ok(())
    }

    pub(crate) fn pipe_connection_lost(
        slf: &Bound<'_, Self>,
        fd: i32,
        exc: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        if let Some(cb) = slf
            .get()
            .protocol_method(py, pyo3::intern!(py, "pipe_connection_lost"))?
        {
            let args = PyTuple::new(py, [fd.into_pyobject(py)?.into_any(), exc])?;
            slf.get().call(py, cb, args)?;
        }
        Self::try_finish(slf)
    }

    /// Once the process exited and every pipe is disconnected: `connection_lost`.
    fn try_finish(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let done = {
            let st = slf.get().st.borrow(py);
            if st.finished {
                return Err(PyAssertionError::new_err(()));
            }
            st.returncode.is_some()
                && st
                    .pipes
                    .iter()
                    .flatten()
                    .all(|p| p.as_ref().is_some_and(|p| p.get().is_disconnected(py)))
        };
        if !done {
            return Ok(());
        }
        slf.get().st.borrow_mut(py).finished = true;
        let cb = slf.getattr(pyo3::intern!(py, "_call_connection_lost"))?;
        slf.get().call(py, cb, PyTuple::new(py, [py.None()])?)
    }

    /// The child exited with `returncode` (from our watching, or a child watcher).
    pub(crate) fn process_exited(
        slf: &Bound<'_, Self>,
        returncode: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if returncode.is_none() || this.st.borrow(py).returncode.is_some() {
            return Err(PyAssertionError::new_err(()));
        }
        if let Some(lp) = this.loop_(py) {
            if lp.get().debug(py) {
                pyapi::asyncio_logger(py)?.call_method1(
                    "info",
                    ("%r exited with return code %r", this.owner(py), &returncode),
                )?;
            }
        }
        let proc = {
            let mut st = this.st.borrow_mut(py);
            st.returncode = Some(returncode.clone().unbind());
            st.proc.as_ref().map(|p| p.clone_ref(py))
        };
        if let Some(proc) = proc {
            let proc = proc.bind(py);
            let name = pyo3::intern!(py, "returncode");
            // The watcher reaped it: the Popen object gets its status, as in asyncio.
            if proc.getattr(name)?.is_none() {
                proc.setattr(name, &returncode)?;
            }
        }
        if let Some(cb) = this.protocol_method(py, pyo3::intern!(py, "process_exited"))? {
            this.call(py, cb, PyTuple::empty(py))?;
        }
        Self::try_finish(slf)?;
        // gh-119710: wait() returns once the process exits, whatever its pipes do (asyncio
        // 3.11-3.13 waits until they are closed too; ferroloop does not, on any version).
        let waiters = this.st.borrow_mut(py).exit_waiters.take();
        for w in waiters.into_iter().flatten() {
            let w = w.bind(py);
            if !w.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
                w.call_method1(pyo3::intern!(py, "set_result"), (&returncode,))?;
            }
        }
        Ok(())
    }

    /// Connects the child's pipes to pipe transports (the loop's, so whichever pipe
    /// transport the loop makes is used) and schedules `connection_made`.
    fn connect_pipes(
        slf: &Bound<'_, Self>,
        lp: &Bound<'_, LoopCore>,
        proc: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let wanted: [bool; 3] = {
            let st = slf.get().st.borrow(py);
            [
                st.pipes[0].is_some(),
                st.pipes[1].is_some(),
                st.pipes[2].is_some(),
            ]
        };
        for (fd, (attr, maker)) in [
            ("stdin", "_make_write_pipe_transport"),
            ("stdout", "_make_read_pipe_transport"),
            ("stderr", "_make_read_pipe_transport"),
        ]
        .into_iter()
        .enumerate()
        {
            if !wanted[fd] {
                continue;
            }
            let pipe = proc.getattr(attr)?;
            if pipe.is_none() {
                continue;
            }
            let proto = Py::new(
                py,
                SubprocessPipeProto::new(slf.clone().unbind(), fd as i32),
            )?;
            let transport = lp.call_method1(maker, (&pipe, &proto))?;
            proto.get().set_pipe(py, &transport);
            slf.get().st.borrow_mut(py).pipes[fd] = Some(Some(proto));
        }
        Ok(())
    }

    /// A failure while connecting the pipes: the connected ones and the child's raw
    /// pipes are closed (asyncio 3.13+), and the waiter gets the error.
    #[cold]
    fn pipes_failed(
        slf: &Bound<'_, Self>,
        proc: &Bound<'_, PyAny>,
        waiter: &Bound<'_, PyAny>,
        err: PyErr,
    ) -> PyResult<()> {
        let py = slf.py();
        let protos: Vec<_> = {
            let st = slf.get().st.borrow(py);
            st.pipes
                .iter()
                .flatten()
                .flatten()
                .map(|p| p.clone_ref(py))
                .collect()
        };
        for p in protos {
            if let Some(pipe) = p.get().pipe(py) {
                pipe.bind(py).call_method0("close")?;
            }
        }
        for attr in ["stdin", "stdout", "stderr"] {
            let raw = proc.getattr(attr)?;
            if !raw.is_none() {
                raw.call_method0("close")?;
            }
        }
        if !waiter.is_none() && !waiter.call_method0("cancelled")?.is_truthy()? {
            waiter.call_method1("set_exception", (err.into_value(py),))?;
        }
        Ok(())
    }
}

#[pymethods]
impl SubprocessCore {
    #[new]
    fn new(
        loop_: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        owner: &Bound<'_, PyAny>,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> PyResult<Self> {
        let lp = loop_
            .cast::<LoopCore>()
            .map_err(|_| PyTypeError::new_err("a ferroloop loop is required"))?;
        let slot = |piped: bool| piped.then_some(None);
        Ok(SubprocessCore {
            st: GilCell::new(ProcState {
                loop_: Some(lp.clone().unbind()),
                owner: Some(owner.clone().unbind()),
                protocol: Some(protocol.clone().unbind()),
                proc: None,
                pid: None,
                returncode: None,
                closed: false,
                finished: false,
                pipes: [slot(stdin), slot(stdout), slot(stderr)],
                pending_calls: Some(Vec::new()),
                exit_waiters: Some(Vec::new()),
                watch: Watch::None,
                pidfd_ready: None,
            }),
        })
    }

    /// The child runs: watch its exit (unless a child watcher does); with `connect`,
    /// connect its pipes, schedule `connection_made` and then `waiter`'s result, as
    /// asyncio's `_connect_pipes` task does, without the task (else the Python class
    /// runs that task, through `loop.connect_read_pipe`/`connect_write_pipe`).
    #[pyo3(signature = (proc, waiter, watch, connect=true))]
    fn _start(
        slf: &Bound<'_, Self>,
        proc: &Bound<'_, PyAny>,
        waiter: &Bound<'_, PyAny>,
        watch: bool,
        connect: bool,
    ) -> PyResult<()> {
        let py = slf.py();
        let pid: i32 = proc.getattr(pyo3::intern!(py, "pid"))?.extract()?;
        {
            let mut st = slf.get().st.borrow_mut(py);
            st.proc = Some(proc.clone().unbind());
            st.pid = Some(pid);
        }
        let Some(lp) = slf.get().loop_(py) else {
            return Ok(());
        };
        if watch {
            Self::watch_exit(slf, &lp, pid)?;
        }
        if lp.get().debug(py) {
            // asyncio's first call_soon here (its task's) checks the thread in debug
            // mode; the child it leaves running is killed here (and reaped).
            if let Err(e) = lp.call_method0(pyo3::intern!(py, "_check_thread")) {
                slf.get().close(py)?;
                return Err(e);
            }
        }
        if !connect {
            return Ok(());
        }
        if let Err(err) = Self::connect_pipes(slf, &lp, proc) {
            if errors_propagate(py, &err) {
                return Err(err);
            }
            return Self::pipes_failed(slf, proc, waiter, err);
        }
        Self::_connected(slf, waiter)
    }

    /// A new protocol for pipe `fd` of the child.
    fn _new_pipe_proto(slf: &Bound<'_, Self>, fd: i32) -> PyResult<Py<SubprocessPipeProto>> {
        Py::new(slf.py(), SubprocessPipeProto::new(slf.clone().unbind(), fd))
    }

    /// Pipe `fd` is connected, with `proto` as its protocol.
    fn _pipe_connected(&self, py: Python<'_>, fd: usize, proto: Py<SubprocessPipeProto>) {
        if let Some(slot) = self.st.borrow_mut(py).pipes.get_mut(fd) {
            *slot = Some(Some(proto));
        }
    }

    /// The pipes are connected: `connection_made`, the calls made meanwhile, and then
    /// the waiter's result (after `connection_made`, as asyncio's order is).
    fn _connected(slf: &Bound<'_, Self>, waiter: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let Some(lp) = slf.get().loop_(py) else {
            return Ok(());
        };
        let protocol = slf.get().protocol(py);
        if let Some(p) = protocol {
            let made = p.getattr(pyo3::intern!(py, "connection_made"))?;
            LoopCore::call_soon(&lp, &made, &PyTuple::new(py, [slf.get().owner(py)])?, None)?;
        }
        let pending = slf.get().st.borrow_mut(py).pending_calls.take();
        for (cb, args) in pending.into_iter().flatten() {
            LoopCore::call_soon(&lp, cb.bind(py), args.bind(py), None)?;
        }
        if !waiter.is_none() {
            crate::transports::base::wake_waiter_soon(&lp, waiter, None)?;
        }
        Ok(())
    }

    fn _pipes_failed(
        slf: &Bound<'_, Self>,
        proc: &Bound<'_, PyAny>,
        waiter: &Bound<'_, PyAny>,
        exc: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        Self::pipes_failed(slf, proc, waiter, PyErr::from_value(exc.clone()))
    }

    /// The pidfd's (or the waiting thread's) callback: the child exited.
    fn _child_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::child_ready(slf)
    }

    /// `Loop.close()` with the child still running.
    fn _loop_closed(&self, py: Python<'_>, loop_: &Bound<'_, PyAny>) -> PyResult<()> {
        self.loop_closed(py, loop_)
    }

    fn _process_exited(slf: &Bound<'_, Self>, returncode: Bound<'_, PyAny>) -> PyResult<()> {
        Self::process_exited(slf, returncode)
    }

    fn _pipe_data_received(&self, py: Python<'_>, fd: i32, data: Bound<'_, PyAny>) -> PyResult<()> {
        self.pipe_data_received(py, fd, data)
    }

    fn _pipe_connection_lost(
        slf: &Bound<'_, Self>,
        fd: i32,
        exc: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        Self::pipe_connection_lost(slf, fd, exc)
    }

    fn _try_finish(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::try_finish(slf)
    }

    fn _call_connection_lost(&self, py: Python<'_>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let protocol = self.protocol(py);
        let result = match protocol {
            Some(p) => p
                .call_method1(pyo3::intern!(py, "connection_lost"), (exc,))
                .map(drop),
            None => Ok(()),
        };
        // Released whatever connection_lost did, as asyncio's `finally:`.
        let released = {
            let mut st = self.st.borrow_mut(py);
            (st.loop_.take(), st.proc.take(), st.protocol.take())
        };
        drop(released);
        result
    }

    /// Closes the pipes and, if the child still runs, kills it (asyncio's `close`).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let (protos, proc, returncode_known, lp) = {
            let mut st = self.st.borrow_mut(py);
            if st.closed {
                return Ok(());
            }
            st.closed = true;
            let protos: Vec<_> = st
                .pipes
                .iter()
                .flatten()
                .flatten()
                .map(|p| p.clone_ref(py))
                .collect();
            (
                protos,
                st.proc.as_ref().map(|p| p.clone_ref(py)),
                st.returncode.is_some(),
                st.loop_.as_ref().map(|l| l.clone_ref(py)),
            )
        };
        // gh-114177: pipes are left alone once the loop is closed (asyncio 3.13+; before,
        // closing them then raised).
        let loop_open = match &lp {
            Some(l) => !l.bind(py).call_method0("is_closed")?.is_truthy()?,
            None => false,
        };
        if loop_open {
            for p in protos {
                if let Some(pipe) = p.get().pipe(py) {
                    pipe.bind(py).call_method0("close")?;
                }
            }
        }
        let Some(proc) = proc else {
            return Ok(());
        };
        let proc = proc.bind(py);
        // Popen.poll() as asyncio: a child that finished unnoticed yet is not killed.
        if returncode_known || !proc.call_method0("poll")?.is_none() {
            return Ok(());
        }
        if lp.as_ref().is_some_and(|l| l.get().debug(py)) {
            pyapi::asyncio_logger(py)?.call_method1(
                "warning",
                ("Close running child process: kill %r", self.owner(py)),
            )?;
        }
        match proc.call_method0("kill") {
            Ok(_) => Ok(()),
            // Exited meanwhile, or setuid.
            Err(e)
                if e.is_instance_of::<PyProcessLookupError>(py)
                    || e.is_instance_of::<pyo3::exceptions::PyPermissionError>(py) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).closed
    }

    fn get_pid(&self, py: Python<'_>) -> Option<i32> {
        self.st.borrow(py).pid
    }

    fn get_returncode(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st
            .borrow(py)
            .returncode
            .as_ref()
            .map(|r| r.clone_ref(py))
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol(py).map(Bound::unbind)
    }

    fn set_protocol(&self, py: Python<'_>, protocol: &Bound<'_, PyAny>) {
        let old = self
            .st
            .borrow_mut(py)
            .protocol
            .replace(protocol.clone().unbind());
        drop(old);
    }

    /// The pipe transport of fd 0, 1 or 2, if that one is a pipe.
    fn get_pipe_transport(
        &self,
        py: Python<'_>,
        fd: &Bound<'_, PyAny>,
    ) -> PyResult<Option<Py<PyAny>>> {
        let Ok(i) = fd.extract::<usize>() else {
            return Ok(None);
        };
        let proto = match self.st.borrow(py).pipes.get(i) {
            Some(Some(Some(p))) => p.clone_ref(py),
            _ => return Ok(None),
        };
        Ok(proto.get().pipe(py))
    }

    /// Sends `signal` to the child, unless it is known to have exited; through its
    /// pidfd when there is one, so a recycled pid cannot be hit.
    fn send_signal(&self, py: Python<'_>, signal: &Bound<'_, PyAny>) -> PyResult<()> {
        self.signal(py, signal)
    }

    fn terminate(&self, py: Python<'_>) -> PyResult<()> {
        self.signal(py, &(nix::libc::SIGTERM).into_pyobject(py)?.into_any())
    }

    fn kill(&self, py: Python<'_>) -> PyResult<()> {
        self.signal(py, &(nix::libc::SIGKILL).into_pyobject(py)?.into_any())
    }

    /// For `_wait()`: a future for the exit, or None when the return code is known. Each
    /// `_wait()` has its own; those of cancelled waits are dropped here.
    fn _exit_waiter(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let (lp, pending) = {
            let st = self.st.borrow(py);
            if st.returncode.is_some() || st.exit_waiters.is_none() {
                return Ok(None);
            }
            let Some(lp) = st.loop_.as_ref().map(|l| l.clone_ref(py)) else {
                return Ok(None);
            };
            let pending: Vec<_> = st
                .exit_waiters
                .iter()
                .flatten()
                .map(|f| f.clone_ref(py))
                .collect();
            (lp, pending)
        };
        // done() is a Python call: made with no borrow held.
        let mut finished = Vec::new();
        for w in &pending {
            if w.bind(py)
                .call_method0(pyo3::intern!(py, "done"))?
                .is_truthy()?
            {
                finished.push(w.as_ptr());
            }
        }
        let fut = LoopCore::create_future(lp.bind(py))?;
        let gone = {
            let mut st = self.st.borrow_mut(py);
            match &mut st.exit_waiters {
                Some(w) => {
                    let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(w)
                        .into_iter()
                        .partition(|f| finished.contains(&f.as_ptr()));
                    *w = kept;
                    w.push(fut.clone().unbind());
                    gone
                }
                None => Vec::new(),
            }
        };
        drop((gone, pending));
        Ok(Some(fut.unbind()))
    }

    /// The pipes' protocols, by fd (asyncio's `_pipes`).
    #[getter]
    fn _pipes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (fd, slot) in self.st.borrow(py).pipes.iter().enumerate() {
            if let Some(p) = slot {
                d.set_item(fd, p.as_ref().map(|p| p.clone_ref(py)))?;
            }
        }
        Ok(d)
    }

    #[getter]
    fn _proc(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st.borrow(py).proc.as_ref().map(|p| p.clone_ref(py))
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Option<Py<LoopCore>> {
        self.st.borrow(py).loop_.as_ref().map(|l| l.clone_ref(py))
    }

    #[getter]
    fn _closed(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).closed
    }

    #[getter]
    fn _finished(&self, py: Python<'_>) -> bool {
        self.st.borrow(py).finished
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Ok(st) = self.st.try_borrow_for_gc(&visit) else {
            return Ok(());
        };
        if let Some(l) = &st.loop_ {
            visit.call(l)?;
        }
        for obj in [
            &st.owner,
            &st.protocol,
            &st.proc,
            &st.returncode,
            &st.pidfd_ready,
        ]
        .into_iter()
        .flatten()
        {
            visit.call(obj)?;
        }
        for p in st.pipes.iter().flatten().flatten() {
            visit.call(p)?;
        }
        for (cb, args) in st.pending_calls.iter().flatten() {
            visit.call(cb)?;
            visit.call(args)?;
        }
        for w in st.exit_waiters.iter().flatten() {
            visit.call(w)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        Python::attach(|py| {
            let released = {
                let mut st = self.st.borrow_mut(py);
                (
                    st.owner.take(),
                    st.protocol.take(),
                    st.pending_calls.take(),
                    st.exit_waiters.take(),
                    std::mem::take(&mut st.pipes),
                    st.pidfd_ready.take(),
                )
            };
            drop(released);
        })
    }
}

fn errors_propagate(py: Python<'_>, err: &PyErr) -> bool {
    crate::errors::propagates(py, err)
}

pub fn init_pymodule(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<SubprocessCore>()?;
    m.add_class::<SubprocessPipeProto>()
}
