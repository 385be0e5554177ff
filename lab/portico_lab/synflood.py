"""A bounded TCP SYN flood for the lab's tests and benchmarks: ``SCRIPT`` is run with
``python3 -S -c SCRIPT src dst count seconds [port]`` inside a client's namespace; it sends up to
``count`` SYNs from random source ports of the client's own address ``src`` (IPv4) to ``dst``,
through a raw socket (the kernel writes the IP header), for at most ``seconds``, and prints how
many it sent. Only lab addresses: the caller passes the lab client's and the VIP's."""

from __future__ import annotations

SCRIPT = r"""
import random, socket, struct, sys, time
src, dst, count, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
port = int(sys.argv[5]) if len(sys.argv) > 5 else 80
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack(f"!{len(b)//2}H", b))
    while t >> 16: t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, 20)
rnd = random.Random(7)
end = time.monotonic() + seconds
sent = 0
while sent < count and (sent % 1000 or time.monotonic() < end):
    sport = rnd.randrange(20000, 60000)
    hdr = struct.pack("!HHIIBBHHH", sport, port, rnd.getrandbits(32), 0, 5 << 4, 2, 64240, 0, 0)
    hdr = hdr[:16] + struct.pack("!H", csum(pseudo + hdr)) + hdr[18:]
    try:
        s.sendto(hdr, (dst, 0))
    except OSError:  # a full send buffer: the flood is as fast as the link takes it
        continue
    sent += 1
print(sent)
"""
