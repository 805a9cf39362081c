"""Casts under a connection flood: p50 and p99 with idle keep-alives and slowloris heads held.

Three runs against one node: no attack; `--idle` idle keep-alive connections
plus `--slow` slowloris ones (a request head a byte at a time, never ended);
and the same again past the node's HTTP cap (`--cap`), where the idlest
keep-alives are evicted to make room. Each run times `--n` sequential casts
from the Python client, and prints the node's memory (RSS) and how many of
the attack's connections the node had closed by the end.

    python bench/connections.py [--n 2000] [--idle 2000] [--slow 1000] [--cap 2500]
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import socket
import threading
import time
from pathlib import Path

from _harness import BenchNode

from yptask.client import Client

SLOW_HEAD = b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Slow: 1\r\n" * 10_000


def casts(url: str, n: int) -> list[float]:
    client = Client(url, timeout_s=30)
    samples = []
    for i in range(n):
        start = time.perf_counter()
        client.cast("bench.echo", {"i": i})
        samples.append((time.perf_counter() - start) * 1e3)
    client.close()
    return sorted(samples)


def attack(address: tuple[str, int], idle: int, slow: int, socks: list[socket.socket]
           ) -> threading.Event:
    """Open the connections; trickle a byte to each slow one every 0.5 s until set."""
    head = f"GET /healthz HTTP/1.1\r\nHost: {address[0]}:{address[1]}\r\n\r\n".encode()
    for _ in range(idle):
        sock = socket.create_connection(address, timeout=30)
        socks.append(sock)
        sock.sendall(head)
    slow_socks = []
    for _ in range(slow):
        sock = socket.create_connection(address, timeout=30)
        socks.append(sock)
        slow_socks.append(sock)
        sock.sendall(SLOW_HEAD[:1])
    stop = threading.Event()

    def trickle() -> None:
        sent = 1
        while not stop.wait(0.5):
            for sock in slow_socks:
                with contextlib.suppress(OSError):
                    sock.send(SLOW_HEAD[sent:sent + 1])
            sent += 1
    threading.Thread(target=trickle, daemon=True).start()
    return stop


def closed(socks: list[socket.socket]) -> int:
    count = 0
    for sock in socks:
        sock.settimeout(0)
        try:
            while sock.recv(65536):
                pass
            count += 1
        except BlockingIOError:
            pass
        except OSError:
            count += 1
    return count


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(label: str, n: int, idle: int, slow: int, cap: int) -> None:
    settings = f"mdns = false\nmax_http_connections = {cap}\n"
    with BenchNode(workers=2, cluster=settings) as node:
        host, port = node.url.removeprefix("http://").split("/")[0].rsplit(":", 1)
        casts(node.url, 200)  # warm up
        socks: list[socket.socket] = []
        stop = attack((host, int(port)), idle, slow, socks)
        try:
            samples = casts(node.url, n)
            print(f"{label}: {n} casts, p50 {samples[len(samples) // 2]:.2f} ms, "
                  f"p99 {samples[int(len(samples) * 0.99)]:.2f} ms, max {samples[-1]:.1f} ms; "
                  f"node RSS {rss_mb(node.pid):.0f} MB; "
                  f"{closed(socks)} of {len(socks)} attack connections closed by the node")
        finally:
            stop.set()
            for sock in socks:
                sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--slow", type=int, default=1000)
    parser.add_argument("--cap", type=int, default=2500)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    big = args.idle + args.slow + 100
    run("no attack", args.n, 0, 0, big)
    run(f"{args.idle} idle + {args.slow} slowloris, under the cap", args.n, args.idle,
        args.slow, big)
    run(f"the same past a cap of {args.cap} (the idlest evicted)", args.n, args.idle,
        args.slow, args.cap)


if __name__ == "__main__":
    main()
