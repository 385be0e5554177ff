"""The lab pods' echo server: stdlib only, so that dozens start in a blink.

TCP: an HTTP/1.1 request gets a JSON body; any other line gets a JSON line back, per line, on the
same connection (a long-lived flow for failover tests). UDP: each datagram gets a JSON datagram.
Every answer says which pod and node answered and the client address and port that the pod saw.

Run as: python3 -S echo.py --pod NAME --node NAME [--port 8080]
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import socketserver
import sys
import threading

HTTP_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ")


def answer(pod: str, node: str, proto: str, peer: tuple, data: bytes = b"") -> dict:
    host = peer[0]
    # IPv4 clients on a dual-stack socket appear as ::ffff:a.b.c.d; report what they sent from.
    if isinstance(host, str) and host.startswith("::ffff:"):
        host = host[len("::ffff:") :]
    return {
        "pod": pod,
        "node": node,
        "proto": proto,
        "client_ip": host,
        "client_port": peer[1],
        "data": data.decode("utf-8", "replace").strip(),
    }


def make_tcp_handler(pod: str, node: str) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        timeout = 300

        def handle(self) -> None:
            while True:
                line = self.rfile.readline(65536)
                if not line:
                    return
                if line.startswith(HTTP_METHODS):
                    if not self.http(line):
                        return
                else:
                    body = answer(pod, node, "tcp", self.client_address, line)
                    self.wfile.write(json.dumps(body).encode() + b"\n")
                    self.wfile.flush()

        def http(self, request_line: bytes) -> bool:
            keep_alive = b"HTTP/1.1" in request_line
            length = 0
            while True:
                header = self.rfile.readline(65536)
                if header in (b"\r\n", b"\n", b""):
                    break
                name, _, value = header.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip() or 0)
                elif name.strip().lower() == b"connection":
                    keep_alive = value.strip().lower() != b"close"
            if length:
                self.rfile.read(length)
            path = request_line.split(b" ")[1] if b" " in request_line else b"/"
            payload = answer(pod, node, "http", self.client_address, path)
            raw = json.dumps(payload).encode() + b"\n"
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(raw)}\r\n"
                f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
            ).encode()
            self.wfile.write(head + raw)
            self.wfile.flush()
            return keep_alive

    return Handler


class TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 512


class TCP6Server(TCPServer):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def serve_udp(sock: socket.socket, pod: str, node: str) -> None:
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(json.dumps(answer(pod, node, "udp", peer, data)).encode(), peer)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pod", required=True)
    ap.add_argument("--node", required=True)
    ap.add_argument("--port", type=int, default=8080)
    args = ap.parse_args(argv)

    tcp = TCP6Server(("::", args.port), make_tcp_handler(args.pod, args.node))
    udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    udp.bind(("::", args.port))
    threading.Thread(target=serve_udp, args=(udp, args.pod, args.node), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"echo {args.pod} on {args.node} listening on :{args.port} tcp+udp", flush=True)
    tcp.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
