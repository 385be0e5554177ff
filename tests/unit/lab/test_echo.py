"""The echo server on loopback: the wire format the lab tests rely on."""

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import portico_lab.echo as echo
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-S",
            str(Path(echo.__file__)),
            "--pod",
            "p1",
            "--node",
            "n1",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert b"listening" in proc.stdout.readline()
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def test_http_reports_pod_node_and_client(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=5) as s:
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\n" not in data.split(b"\r\n\r\n", 1)[-1] or b"\r\n\r\n" not in data:
            data += s.recv(4096)
        head, body = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200")
        got = json.loads(body)
        assert got["pod"] == "p1" and got["node"] == "n1" and got["proto"] == "http"
        assert got["client_ip"] == "127.0.0.1"
        assert got["client_port"] == s.getsockname()[1]
        assert got["data"] == "/hello"


def test_line_protocol_keeps_the_connection(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=5) as s:
        f = s.makefile("rwb")
        for i in range(3):
            f.write(f"ping {i}\n".encode())
            f.flush()
            got = json.loads(f.readline())
            assert got["data"] == f"ping {i}" and got["proto"] == "tcp"
            assert got["client_port"] == s.getsockname()[1]


def test_udp(server: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(b"hi", ("127.0.0.1", server))
        got = json.loads(s.recvfrom(65535)[0])
        assert got == {
            "pod": "p1",
            "node": "n1",
            "proto": "udp",
            "client_ip": "127.0.0.1",
            "client_port": s.getsockname()[1],
            "data": "hi",
        }


def test_answer_unmaps_v4_in_v6() -> None:
    assert echo.answer("p", "n", "udp", ("::ffff:198.18.1.1", 5))["client_ip"] == "198.18.1.1"
    assert echo.answer("p", "n", "udp", ("fd00::1", 5, 0, 0))["client_ip"] == "fd00::1"
