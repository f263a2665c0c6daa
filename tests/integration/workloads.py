"""Python snippets run inside a container's network namespace (``conftest.in_netns``).

Loopback only: each makes its traffic on 127.0.0.1 in the container's own namespace.
"""

from __future__ import annotations

_HOLD = r"""
import socket, time
srv = socket.socket(socket.AF_INET6)   # dual-stack: accepted IPv4 clients count under TCP6
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("::", 8080)); srv.listen(128)
held = []
for _ in range({n}):
    held.append(socket.create_connection(("127.0.0.1", 8080)))
    held.append(srv.accept()[0])
udp = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range({udp})]
for s in udp: s.bind(("127.0.0.1", 0))
udp6 = [socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) for _ in range({udp6})]
for s in udp6: s.bind(("::", 0))
print("ready", flush=True)
time.sleep(600)
"""

_TIME_WAIT = r"""
import socket
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(64)
for _ in range({m}):
    c = socket.create_connection(srv.getsockname())
    a, _ = srv.accept()
    c.close()          # the client closes first: its socket goes to TIME_WAIT
    a.recv(1); a.close()
"""

_UDP = r"""
import socket, time
s = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range({v4})]
for x in s: x.bind(("127.0.0.1", 0))
s6 = [socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) for _ in range({v6})]
for x in s6: x.bind(("::", 0))
print("ready", flush=True)
time.sleep(600)
"""


def hold(n: int, udp: int = 0, udp6: int = 0) -> str:
    """An IPv6 listener with n held IPv4 connections to it (2n ESTABLISHED), and UDP sockets; prints ready."""
    return _HOLD.format(n=n, udp=udp, udp6=udp6)


def time_wait(m: int) -> str:
    """m short connections, closed client first: m sockets in TIME_WAIT."""
    return _TIME_WAIT.format(m=m)


def udp(v4: int, v6: int) -> str:
    """v4 IPv4 and v6 IPv6 UDP sockets, held; prints ready."""
    return _UDP.format(v4=v4, v6=v6)
