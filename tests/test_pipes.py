"""Pipe transports (issue 11): `connect_read_pipe`/`connect_write_pipe` over pipes, FIFOs
and ptys, on the stock loop (the oracle) and on ferroloop. CPython's test_unix_events (its
pipe classes) and uvloop's test_pipes were the oracles for what is asserted here."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import pty
import sys
import tempfile
from typing import Any

import pytest
from helpers import Errors, asyncio_bug, open_fds, run

pytestmark = pytest.mark.timeout(120)

# asyncio 3.10's read pipe has no is_reading() (NotImplementedError).
HAS_IS_READING = sys.version_info >= (3, 11)

KiB = 1024
MiB = 1024 * KiB


class Reader(asyncio.Protocol):
    """Records what a read pipe delivers; `pause_after`: pauses reading once it has that
    many bytes."""

    def __init__(self, pause_after: int | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.events: list[str] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.digest = hashlib.sha256()
        self.keep = True
        self.pause_after = pause_after
        self.paused = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        assert data, "data_received() with no data"
        self.size += len(data)
        self.digest.update(data)
        if self.keep:
            self.chunks.append(data)
        if self.pause_after is not None and self.size >= self.pause_after:
            self.pause_after = None
            self.transport.pause_reading()
            self.paused.set_result(self.size)

    def eof_received(self) -> None:
        self.events.append("eof")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


class Writer(asyncio.Protocol):
    """Records a write pipe's flow-control calls; `drain()` waits while paused."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.pauses = 0
        self.resumes = 0
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.lost = loop.create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def pause_writing(self) -> None:
        self.pauses += 1
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.resumes += 1
        self.can_write.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set_result(exc)
        self.can_write.set()

    async def drain(self) -> None:
        await self.can_write.wait()


async def pipe_pair(loop: Any, reader: Any = Reader, writer: Any = Writer) -> tuple[Any, ...]:
    """(read transport, Reader, write transport, Writer) over one os.pipe()."""
    r, w = os.pipe()
    rt, rp = await loop.connect_read_pipe(reader, open(r, "rb", buffering=0))
    wt, wp = await loop.connect_write_pipe(writer, open(w, "wb", buffering=0))
    return rt, rp, wt, wp


def test_50_mb_through_a_pipe_checksum(loop):
    """50 MB through os.pipe() from a write pipe transport to a read pipe transport, with
    the writer's flow control: the bytes arrive in order, checksum-checked."""
    total = 50 * 1000 * 1000
    chunk = os.urandom(MiB)

    async def main():
        rt, rp, wt, wp = await pipe_pair(loop)
        rp.keep = False
        want = hashlib.sha256()
        sent = 0
        while sent < total:
            piece = chunk[: min(len(chunk), total - sent)]
            wt.write(piece)
            want.update(piece)
            sent += len(piece)
            await wp.drain()
        wt.close()
        assert await wp.lost is None
        assert await rp.lost is None
        assert rp.size == total
        assert rp.digest.hexdigest() == want.hexdigest()
        assert wp.pauses >= 1 and wp.resumes == wp.pauses  # the 64 KiB high mark was hit
        assert rp.events == ["made", "eof", "lost"]

    run(loop, main(), 90)


def test_5000_pipes_fd_count_back_to_start(loop):
    """5,000 pipes, 100 open at a time, each end a transport that carries one message:
    every fd is released when the transports close."""

    async def main():
        before = open_fds()
        for _ in range(50):
            pairs = [await pipe_pair(loop) for _ in range(100)]
            for i, (_, _, wt, _) in enumerate(pairs):
                wt.write(b"%d" % i)
                wt.close()
            for i, (rt, rp, _, wp) in enumerate(pairs):
                assert await rp.lost is None
                assert await wp.lost is None
                assert rp.data == b"%d" % i
                assert rt.is_closing()
            del pairs
        assert open_fds() == before

    run(loop, main(), 110)


def test_read_pipe_eof(loop):
    """The write end closed: eof_received(), then connection_lost(None); the transport
    closed its pipe."""

    async def main():
        r, w = os.pipe()
        rt, rp = await loop.connect_read_pipe(Reader, open(r, "rb", buffering=0))
        assert rt.get_extra_info("pipe").fileno() == r
        assert not rt.is_closing()
        assert not HAS_IS_READING or rt.is_reading()
        os.write(w, b"last words")
        os.close(w)
        assert await rp.lost is None
        assert rp.events == ["made", "eof", "lost"]
        assert rp.data == b"last words"
        assert rt.is_closing()
        assert rt.get_extra_info("pipe").closed

    run(loop, main())


def test_pty_read_until_eio(loop):
    """A pty's master read until the slave side is closed: the read fails with EIO, which
    is expected (not reported to the exception handler) and ends the transport with
    connection_lost(OSError(EIO)), no eof_received()."""

    async def main():
        errors = Errors()
        loop.set_exception_handler(errors)
        master, slave = pty.openpty()
        rt, rp = await loop.connect_read_pipe(Reader, open(master, "rb", buffering=0))
        os.write(slave, b"hello from the pty\n")
        while b"\n" not in rp.data:
            await asyncio.sleep(0.001)
        os.close(slave)
        exc = await rp.lost
        assert isinstance(exc, OSError) and exc.errno == errno.EIO, repr(exc)
        assert rp.events == ["made", "lost"]
        assert b"hello from the pty" in rp.data
        assert errors.contexts == []

    run(loop, main())


def test_fifo_round_trip(loop):
    """A named FIFO: its write end watched for the reader's departure, its read end
    seeing EOF when the writer closes."""

    async def main():
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "fifo")
            os.mkfifo(path)
            rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            rt, rp = await loop.connect_read_pipe(Reader, open(rfd, "rb", buffering=0))
            wt, wp = await loop.connect_write_pipe(Writer, open(wfd, "wb", buffering=0))
            data = os.urandom(300 * KiB)
            wt.write(data)
            wt.close()
            assert await wp.lost is None
            assert await rp.lost is None
            assert rp.data == data

    run(loop, main())


def test_write_pipe_reader_gone_nothing_buffered(loop):
    """The read end closed while nothing is buffered: the write transport learns it from
    the poller (asyncio's reader trick) and closes with connection_lost(None)."""

    async def main():
        r, w = os.pipe()
        wt, wp = await loop.connect_write_pipe(Writer, open(w, "wb", buffering=0))
        os.close(r)
        assert await wp.lost is None
        assert wt.is_closing()

    run(loop, main())


def test_write_pipe_reader_gone_with_data_buffered(loop):
    """The read end closed with data still buffered: connection_lost(BrokenPipeError),
    the buffer dropped."""

    async def main():
        r, w = os.pipe()
        wt, wp = await loop.connect_write_pipe(Writer, open(w, "wb", buffering=0))
        wt.write(b"x" * (1 * MiB))  # more than the pipe holds
        assert wt.get_write_buffer_size() > 0
        os.close(r)
        exc = await wp.lost
        assert isinstance(exc, BrokenPipeError), repr(exc)
        assert wt.get_write_buffer_size() == 0

    run(loop, main())


def test_write_pipe_epipe_on_write(loop):
    """A write to a pipe whose reader is already gone fails with EPIPE: an expected error
    (not reported), the transport closes with connection_lost(BrokenPipeError), and later
    writes are dropped, with a warning from the fifth on."""

    async def main(caplog_records: list[logging.LogRecord]):
        errors = Errors()
        loop.set_exception_handler(errors)
        r, w = os.pipe()
        os.close(r)
        wt, wp = await loop.connect_write_pipe(Writer, open(w, "wb", buffering=0))
        wt.write(b"into the void")
        assert wt.is_closing()
        exc = await wp.lost
        assert isinstance(exc, BrokenPipeError), repr(exc)
        for _ in range(6):
            wt.write(b"more")
        assert wt.get_write_buffer_size() == 0
        assert errors.contexts == []
        warnings = [r for r in caplog_records if "pipe closed by peer" in r.getMessage()]
        assert len(warnings) == 2

    handler = _Records()
    logging.getLogger("asyncio").addHandler(handler)
    try:
        run(loop, main(handler.records))
    finally:
        logging.getLogger("asyncio").removeHandler(handler)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_pause_and_resume_reading(loop):
    """pause_reading() inside data_received(): nothing more arrives until resume_reading();
    then the rest, and EOF."""

    async def main():
        r, w = os.pipe()
        rt, rp = await loop.connect_read_pipe(
            lambda: Reader(pause_after=1), open(r, "rb", buffering=0)
        )
        os.write(w, b"first")
        got = await rp.paused
        assert not HAS_IS_READING or not rt.is_reading()
        rt.pause_reading()  # paused already: nothing
        os.write(w, b"second")
        os.close(w)
        await asyncio.sleep(0.05)
        assert rp.size == got and rp.events == ["made"]
        rt.resume_reading()
        assert not HAS_IS_READING or rt.is_reading()
        assert await rp.lost is None
        assert rp.data == b"firstsecond"
        assert rp.events == ["made", "eof", "lost"]
        rt.resume_reading()  # closed: nothing
        assert not HAS_IS_READING or not rt.is_reading()

    run(loop, main())


def test_pause_and_resume_writing(loop):
    """The write pipe's water marks: pause_writing() past the high mark, resume_writing()
    at the low one, the limits as given; bad limits raise asyncio's ValueError."""

    async def main():
        r, w = os.pipe()
        os.set_blocking(r, False)
        wt, wp = await loop.connect_write_pipe(Writer, open(w, "wb", buffering=0))
        assert wt.get_write_buffer_limits() == (16 * KiB, 64 * KiB)
        wt.set_write_buffer_limits(high=200 * KiB, low=10 * KiB)
        assert wt.get_write_buffer_limits() == (10 * KiB, 200 * KiB)
        with pytest.raises(ValueError):
            wt.set_write_buffer_limits(high=1, low=2)
        with pytest.raises(ValueError):
            wt.set_write_buffer_limits(low=-1)
        wt.write(b"a" * (150 * KiB))  # the pipe takes 64 KiB, the rest is buffered
        assert wp.pauses == 0
        wt.write(b"b" * (150 * KiB))
        assert wp.pauses == 1
        assert wt.get_write_buffer_size() > 200 * KiB
        got = bytearray()
        while wp.resumes == 0:
            await asyncio.sleep(0)
            try:
                got += os.read(r, 64 * KiB)
            except BlockingIOError:
                pass
        assert wt.get_write_buffer_size() <= 10 * KiB
        # Lowering the high mark under the buffered size pauses at once.
        if wt.get_write_buffer_size() > 0:
            wt.set_write_buffer_limits(high=0)
            assert wp.pauses == 2
        wt.close()
        os.set_blocking(r, True)
        while len(got) < 300 * KiB:
            got += os.read(r, 64 * KiB)
        assert bytes(got) == b"a" * (150 * KiB) + b"b" * (150 * KiB)
        assert await wp.lost is None
        os.close(r)

    run(loop, main())


def test_write_types_and_empty_writes(loop):
    """bytes, bytearray and memoryview are written; anything else fails asyncio's
    assertion; empty writes write nothing."""

    async def main():
        rt, rp, wt, wp = await pipe_pair(loop)
        wt.write(b"")
        wt.write(bytearray(b"ab"))
        wt.write(memoryview(b"xcdx")[1:3])
        wt.write(b"ef")
        with pytest.raises(AssertionError):
            wt.write("text")
        wt.writelines([b"g", bytearray(b"h")])
        assert wt.can_write_eof()
        wt.write_eof()
        assert wt.is_closing()
        assert await rp.lost is None
        assert rp.data == b"abcdefgh"

    run(loop, main())


def test_abort_drops_buffered_data(loop):
    """abort() with data buffered: connection_lost(None) at once, the buffer dropped."""

    async def main():
        r, w = os.pipe()
        wt, wp = await loop.connect_write_pipe(Writer, open(w, "wb", buffering=0))
        wt.write(b"z" * MiB)
        assert wt.get_write_buffer_size() > 0
        wt.abort()
        assert wt.get_write_buffer_size() == 0
        assert await wp.lost is None
        os.close(r)

    run(loop, main())


def test_close_waits_for_buffered_data(loop):
    """close() with data buffered: the data is written first, then connection_lost."""

    async def main():
        rt, rp, wt, wp = await pipe_pair(loop)
        data = os.urandom(2 * MiB)
        wt.write(data)
        wt.close()
        wt.close()
        assert wt.is_closing()
        assert not wp.lost.done()
        assert await wp.lost is None
        assert await rp.lost is None
        assert rp.data == data

    run(loop, main())


@asyncio_bug("a second _call_connection_lost (abort() after close()) raises AttributeError")
def test_abort_after_close_calls_connection_lost_once(loop):
    async def main():
        errors = Errors()
        loop.set_exception_handler(errors)
        rt, rp, wt, wp = await pipe_pair(loop)
        wt.close()
        wt.abort()
        assert await wp.lost is None
        await asyncio.sleep(0.01)
        rt.close()
        await rp.lost
        assert errors.contexts == []

    run(loop, main())


def test_data_received_exception_goes_to_the_handler(loop):
    """An exception in data_received() is the callback's: reported, the pipe stays open."""

    class Failing(Reader):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.size == 3:
                raise ZeroDivisionError("boom")

    async def main():
        errors = Errors()
        loop.set_exception_handler(errors)
        rt, rp, wt, wp = await pipe_pair(loop, reader=Failing)
        wt.write(b"abc")
        while not errors.contexts:
            await asyncio.sleep(0.001)
        assert isinstance(errors.contexts[0]["exception"], ZeroDivisionError)
        assert not rt.is_closing()
        wt.write(b"def")
        wt.close()
        assert await rp.lost is None
        assert rp.data == b"abcdef"

    run(loop, main())


def test_connection_lost_exception_still_closes_the_pipe(loop):
    class Failing(Reader):
        def connection_lost(self, exc: BaseException | None) -> None:
            super().connection_lost(exc)
            raise ZeroDivisionError("boom")

    async def main():
        errors = Errors()
        loop.set_exception_handler(errors)
        r, w = os.pipe()
        pipe = open(r, "rb", buffering=0)
        rt, rp = await loop.connect_read_pipe(Failing, pipe)
        rt.close()
        await rp.lost
        await asyncio.sleep(0)
        assert pipe.closed
        assert [type(c["exception"]) for c in errors.contexts] == [ZeroDivisionError]
        os.close(w)

    run(loop, main())


def test_flow_control_callback_failures_go_to_the_handler(loop):
    class Failing(Writer):
        def pause_writing(self) -> None:
            super().pause_writing()
            raise ZeroDivisionError("pause")

    async def main():
        errors = Errors()
        loop.set_exception_handler(errors)
        r, w = os.pipe()
        wt, wp = await loop.connect_write_pipe(Failing, open(w, "wb", buffering=0))
        wt.write(b"q" * (200 * KiB))
        assert errors.messages() == ["protocol.pause_writing() failed"]
        assert errors.contexts[0]["transport"] is wt
        assert errors.contexts[0]["protocol"] is wp
        wt.abort()
        await wp.lost
        os.close(r)

    run(loop, main())


@pytest.mark.parametrize("which", ["read", "write"])
def test_a_regular_file_is_refused(loop, which, tmp_path):
    """Pipe transports are for pipes, sockets and character devices: a regular file is
    refused with asyncio's ValueError and stays open (the caller's)."""

    async def main():
        path = tmp_path / "f"
        path.write_bytes(b"data")
        with open(path, "rb+", buffering=0) as f:
            connect = loop.connect_read_pipe if which == "read" else loop.connect_write_pipe
            with pytest.raises(ValueError, match="Pipe transport is"):
                await connect(asyncio.Protocol, f)
            assert not f.closed

    run(loop, main())


def test_set_protocol_and_repr(loop):
    async def main():
        rt, rp, wt, wp = await pipe_pair(loop)
        assert rt.get_protocol() is rp and wt.get_protocol() is wp
        fd = rt.get_extra_info("pipe").fileno()
        assert repr(rt).endswith(f" fd={fd} polling>")
        wfd = wt.get_extra_info("pipe").fileno()
        assert repr(wt).endswith(f" fd={wfd} idle bufsize=0>")
        other = Reader()
        rt.set_protocol(other)
        assert rt.get_protocol() is other
        wt.close()
        assert await other.lost is None
        assert not rp.lost.done()
        assert repr(rt).endswith(f" closed fd={fd} closed>")
        await wp.lost
        assert repr(wt).endswith(f" closed fd={wfd} closed>")

    run(loop, main())


def test_isinstance_and_extra_info(loop):
    async def main():
        rt, rp, wt, wp = await pipe_pair(loop)
        assert isinstance(rt, asyncio.ReadTransport)
        assert isinstance(wt, asyncio.WriteTransport)
        assert wt.get_extra_info("pipe") is not rt.get_extra_info("pipe")
        assert rt.get_extra_info("missing", 7) == 7
        wt.close()
        await rp.lost

    run(loop, main())


def test_debug_mode_logs(loop, caplog):
    """In debug mode the read end logs the writer's departure, as asyncio does."""

    async def main():
        loop.set_debug(True)
        rt, rp, wt, wp = await pipe_pair(loop)
        wt.close()
        await rp.lost
        await asyncio.sleep(0)

    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        run(loop, main())
    assert any("was closed by peer" in r.getMessage() for r in caplog.records)
