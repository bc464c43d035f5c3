"""getaddrinfo/getnameinfo on both loops; numeric addresses give what socket.getaddrinfo gives."""

from __future__ import annotations

import socket

import pytest


@pytest.mark.parametrize(
    ("host", "port", "kwargs"),
    [
        ("127.0.0.1", 80, {}),
        ("127.0.0.1", "8080", {"type": socket.SOCK_STREAM}),
        ("::1", 443, {"family": socket.AF_INET6}),
        (b"127.0.0.1", b"53", {"type": socket.SOCK_DGRAM}),
        (None, 0, {"flags": socket.AI_PASSIVE, "type": socket.SOCK_STREAM}),
        ("localhost", 80, {"type": socket.SOCK_STREAM}),
        ("127.0.0.1", "http", {"type": socket.SOCK_STREAM}),
    ],
)
def test_getaddrinfo_matches_socket(loop, host, port, kwargs):
    expected = socket.getaddrinfo(
        host,
        port,
        kwargs.get("family", 0),
        kwargs.get("type", 0),
        kwargs.get("proto", 0),
        kwargs.get("flags", 0),
    )
    got = loop.run_until_complete(loop.getaddrinfo(host, port, **kwargs))
    assert sorted(got) == sorted(expected)


def test_getaddrinfo_errors_like_socket(loop):
    with pytest.raises(socket.gaierror):
        loop.run_until_complete(
            loop.getaddrinfo("::1", 80, family=socket.AF_INET, flags=socket.AI_NUMERICHOST)
        )
    with pytest.raises(socket.gaierror):
        loop.run_until_complete(loop.getaddrinfo("not an address", 80, flags=socket.AI_NUMERICHOST))


def test_getnameinfo(loop):
    expected = socket.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
    got = loop.run_until_complete(
        loop.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
    )
    assert got == expected
