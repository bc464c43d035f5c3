"""`add_reader`/`add_writer`/`remove_reader`/`remove_writer` by fd number and by file
object, on the stock loop and on ferroloop: selectors' lookup rules (a closed socket is
found by the object it was registered with), bad numbers, and what is left watched."""

from __future__ import annotations

import errno
import socket

import pytest


def noop() -> None:
    pass


@pytest.mark.parametrize("direction", ["reader", "writer"])
def test_remove_closed_socket_registered_by_object(loop, direction):
    # anyio's suite closes a socket and then removes its reader by the socket object.
    add = getattr(loop, f"add_{direction}")
    remove = getattr(loop, f"remove_{direction}")
    s = socket.socket()
    s.setblocking(False)
    add(s, noop)
    s.close()
    assert remove(s) is True
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        remove(s)  # no longer registered: its number says nothing


@pytest.mark.parametrize("direction", ["reader", "writer"])
def test_remove_closed_socket_registered_by_number_raises(loop, direction):
    add = getattr(loop, f"add_{direction}")
    remove = getattr(loop, f"remove_{direction}")
    s = socket.socket()
    fd = s.fileno()
    add(fd, noop)
    s.close()
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        remove(s)
    assert remove(fd) is True


def test_add_reader_on_a_closed_socket(loop):
    s = socket.socket()
    s.close()
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        loop.add_reader(s, noop)


def test_add_reader_again_on_a_closed_socket_replaces_the_reader(loop):
    # Found by the object, as selectors' modify() finds it: the old handle is cancelled.
    calls = []
    s = socket.socket()
    s.setblocking(False)
    loop.add_reader(s, calls.append, "old")
    s.close()
    loop.add_reader(s, calls.append, "new")
    assert loop.remove_reader(s) is True
    assert calls == []


def test_closed_socket_new_direction_raises(loop):
    # selectors modifies the closed fd's registration: EBADF, and the registration goes.
    s = socket.socket()
    loop.add_reader(s, noop)
    s.close()
    with pytest.raises(OSError) as e:
        loop.add_writer(s, noop)
    assert e.value.errno == errno.EBADF
    with pytest.raises(ValueError):
        loop.remove_reader(s)


def test_remove_reader_keeps_the_writer(loop):
    a, b = socket.socketpair()
    with a, b:
        fired = []
        loop.add_reader(a, fired.append, "r")
        loop.add_writer(a, fired.append, "w")
        assert loop.remove_reader(a) is True
        loop.call_later(0.01, loop.stop)
        loop.run_forever()
        assert "w" in fired and "r" not in fired
        assert loop.remove_writer(a) is True


@pytest.mark.parametrize("fd", [2**31, 2**40, 2**70])
def test_add_reader_fd_beyond_c_int(loop, fd):
    with pytest.raises(OverflowError):
        loop.add_reader(fd, noop)
    with pytest.raises(OverflowError):
        loop.add_writer(fd, noop)


@pytest.mark.parametrize("fd", [2**31, 2**40, 2**70])
def test_remove_reader_fd_beyond_c_int(loop, fd):
    assert loop.remove_reader(fd) is False
    assert loop.remove_writer(fd) is False


@pytest.mark.parametrize("fd", [-1, -(2**70)])
def test_negative_fds(loop, fd):
    with pytest.raises(ValueError, match="Invalid file descriptor"):
        loop.add_reader(fd, noop)
    with pytest.raises(ValueError, match="Invalid file descriptor"):
        loop.remove_reader(fd)


class Fileno:
    def __init__(self, value):
        self.value = value

    def fileno(self):
        return self.value


def _value_id(value: object) -> str:
    # Stable across processes (pytest-xdist workers must collect the same ids).
    return "object()" if type(value) is object else repr(value)


@pytest.mark.parametrize("value", ["x", None, "1.5", object()], ids=_value_id)
def test_bad_fileno_results(loop, value):
    with pytest.raises(ValueError, match="Invalid file object"):
        loop.add_reader(Fileno(value), noop)
    with pytest.raises(ValueError, match="Invalid file object"):
        loop.remove_reader(Fileno(value))


def test_fileno_errors_other_than_value_type_attribute_propagate(loop):
    class Broken:
        def fileno(self):
            raise OSError("broken")

    with pytest.raises(OSError, match="broken"):
        loop.add_reader(Broken(), noop)


def test_fileno_returning_a_numeric_string(loop):
    # selectors uses int(fileobj.fileno()), so "3"-like strings name an fd.
    a, b = socket.socketpair()
    with a, b:
        loop.add_reader(Fileno(str(a.fileno())), noop)
        assert loop.remove_reader(a.fileno()) is True


def test_objects_without_fileno(loop):
    with pytest.raises(ValueError, match="Invalid file object"):
        loop.add_reader(object(), noop)
    with pytest.raises(ValueError, match="Invalid file object"):
        loop.remove_writer("not a file")
