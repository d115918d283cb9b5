"""Load check of `fewtune serve` on loopback: N concurrent clients post one photo each to /predict
for a bounded time while (with --hostile, the default) other clients attack it: huge-but-legal
images, bodies sent slowly or without a Content-Length past the cap, cross-origin writes, and
concurrent edits and saves. Reports normal requests served, failures, latency percentiles, HTTP
500s and the server's peak RSS. Not a test.

    python bench/serve_load.py --clients 8 --seconds 30
    # issue 13's goal: 0 failed, 0 x 500, < 1.5 GB
    python bench/serve_load.py --clients 4 --seconds 20 --hostile
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from fewtune.app.demo import demo_photos


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def big_png(width: int, height: int, bit_depth: int, colour_type: int, channels: int) -> bytes:
    """A legal PNG of any size written row by row: a few hundred KB that decode to hundreds of MB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row_bytes = width * channels * bit_depth // 8
    row = b"\0" + (bytes(range(256)) * (row_bytes // 256 + 1))[:row_bytes]
    compressor = zlib.compressobj(1)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def big_jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((width, height)).convert("RGB").save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def peak_rss(pid: int) -> int:
    """The process's high-water mark of resident memory (VmHWM), in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) * 1024


class Tally:
    """Thread-safe counts: normal latencies and failures, hostile answers per kind, 500s per endpoint."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.hostile: dict[str, Counter] = {}
        self.server_errors: Counter = Counter()

    def normal(self, ok: bool, seconds: float, what: str) -> None:
        with self.lock:
            (self.latencies.append(seconds) if ok else self.failures.append(what))

    def attack(self, kind: str, outcome: str, endpoint: str = "") -> None:
        with self.lock:
            self.hostile.setdefault(kind, Counter())[outcome] += 1
            if outcome == "500":
                self.server_errors[endpoint or kind] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the clients send requests")
    parser.add_argument(
        "--hostile", action=argparse.BooleanOptionalAction, default=True, help="mix hostile traffic in"
    )
    parser.add_argument(
        "--attacks",
        default="huge,chunked,slow,origin,edits,saves",
        help="which hostile kinds to mix in (comma-separated)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results/serve_load.json"))
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    models = tempfile.mkdtemp()
    server = subprocess.Popen(
        [sys.executable, "-m", "fewtune", "serve", "--port", str(port), "--models-dir", models]
    )
    tally = Tally()
    try:
        for _ in range(200):
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        photos = {c: sorted((demo_photos() / c).iterdir()) for c in ("strawberry", "scissors", "cup")}
        for name, files in photos.items():  # teach three classes, one photo each
            httpx.post(
                f"{url}/classes/{name}/examples",
                files={"file": (files[0].name, files[0].read_bytes(), "image/jpeg")},
                timeout=60,
            )
        queries = [p.read_bytes() for files in photos.values() for p in files[1:]]
        huge = huge_images() if args.hostile else {}
        idle_rss = peak_rss(server.pid)
        stop = time.monotonic() + args.seconds

        def client(seed: int) -> None:
            with httpx.Client(timeout=120) as http:
                i = seed
                while time.monotonic() < stop:
                    started = time.perf_counter()
                    try:
                        response = http.post(
                            f"{url}/predict",
                            files={"file": ("q.jpg", queries[i % len(queries)], "image/jpeg")},
                        )
                        ok, what = (
                            response.status_code == 200,
                            f"{response.status_code} {response.text[:200]}",
                        )
                        if response.status_code >= 500:
                            tally.attack("normal", "500", "/predict")
                    except httpx.HTTPError as exc:
                        ok, what = False, repr(exc)
                    tally.normal(ok, time.perf_counter() - started, what)
                    i += args.clients

        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        # attackers in their own process: they must not slow the normal clients by holding our GIL
        results: multiprocessing.Queue = multiprocessing.get_context("fork").Queue()
        attackers = multiprocessing.get_context("fork").Process(
            target=attack, args=(url, port, stop, queries[0], huge, set(args.attacks.split(",")), results)
        )
        started = time.perf_counter()
        if args.hostile:
            attackers.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if args.hostile:
            hostile, server_errors = results.get(timeout=300)
            attackers.join(timeout=60)
            tally.hostile.update(hostile)
            tally.server_errors.update(server_errors)
        elapsed = time.perf_counter() - started
        server_peak = peak_rss(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=10)

    ms = np.array(tally.latencies) * 1000
    result = {
        "clients": args.clients,
        "hostile": args.attacks if args.hostile else False,
        "seconds": round(elapsed, 1),
        "normal_requests": len(tally.latencies) + len(tally.failures),
        "normal_served": len(tally.latencies),
        "normal_failed": len(tally.failures),
        "requests_per_s": round(len(tally.latencies) / elapsed, 2),
        "latency_ms": {q: round(float(np.percentile(ms, int(q[1:]))), 1) for q in ("p50", "p95", "p99")}
        if len(ms)
        else {},
        "http_500": sum(tally.server_errors.values()),
        "http_500_by_endpoint": dict(tally.server_errors),
        "hostile_outcomes": {kind: dict(counts) for kind, counts in sorted(tally.hostile.items())},
        "server_rss_mb": {"after_start": round(idle_rss / 2**20), "peak": round(server_peak / 2**20)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if tally.failures:
        print("first failure:", tally.failures[0], file=sys.stderr)


def huge_images() -> dict[str, tuple[str, bytes]]:
    return {
        "png16_9400": (
            "huge16.png",
            big_png(9400, 9400, 16, 0, 1),
        ),  # 177 MB decoded, just under the bomb guard
        "rgba_8200": ("rgba.png", big_png(8200, 8200, 8, 6, 4)),  # 269 MB decoded: over the decode cap
        "jpeg_8000x6000": ("big.jpg", big_jpeg(8000, 6000)),  # reduced-scale JPEG decode
    }


def attack(url: str, port: int, stop: float, photo: bytes, huge: dict, kinds: set[str], results) -> None:
    """The attackers' process: run every hostile thread until ``stop``, send back the tallies."""
    tally = Tally()
    threads = hostile_threads(url, port, stop, tally, photo, huge, kinds)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put((tally.hostile, tally.server_errors))


def hostile_threads(
    url: str, port: int, stop: float, tally: Tally, photo: bytes, huge: dict, kinds: set[str]
) -> list[threading.Thread]:
    """One thread per kind of attack, each looping until ``stop``."""

    def loop(fn) -> threading.Thread:
        def run() -> None:
            with httpx.Client(timeout=120) as http:
                while time.monotonic() < stop:
                    try:
                        fn(http)
                    except httpx.HTTPError as exc:  # e.g. the server closed a refused upload mid-send
                        tally.attack(fn.__name__, type(exc).__name__)

        return threading.Thread(target=run, daemon=True)

    def record(kind: str, response: httpx.Response | Exception, endpoint: str) -> None:
        outcome = (
            str(response.status_code) if isinstance(response, httpx.Response) else type(response).__name__
        )
        tally.attack(kind, outcome, endpoint)

    def huge_image(kind: str):
        name, data = huge[kind]

        def send(http: httpx.Client) -> None:
            try:
                record(
                    f"huge:{kind}",
                    http.post(f"{url}/predict", files={"file": (name, data, "image/png")}),
                    "/predict",
                )
            except httpx.HTTPError as exc:
                record(f"huge:{kind}", exc, "/predict")

        send.__name__ = f"huge:{kind}"
        return send

    def oversized_chunked(http: httpx.Client) -> None:
        """64 MB without a Content-Length: must be cut off at the 32 MB cap, not read in full."""

        def body():
            for _ in range(64):
                yield b"x" * (1 << 20)

        try:
            response = http.post(
                f"{url}/predict", content=body(), headers={"content-type": "application/json"}
            )
            record("chunked_64mb", response, "/predict")
        except httpx.HTTPError as exc:  # the server may close while we are still sending: also a refusal
            record("chunked_64mb", exc, "/predict")

    def slow_body(_: httpx.Client) -> None:
        """A multipart body trickled at 2 KB/s for 3 s, then abandoned (the connection dropped)."""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(
                    f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 1000000\r\n"
                    "Content-Type: multipart/form-data; boundary=zz\r\n\r\n--zz\r\n".encode()
                )
                for _ in range(30):
                    if time.monotonic() > stop:
                        break
                    conn.sendall(b"y" * 200)
                    time.sleep(0.1)
            tally.attack("slow_body", "abandoned")
        except OSError as exc:
            tally.attack("slow_body", type(exc).__name__)

    def cross_origin(http: httpx.Client) -> None:
        evil = {"Origin": "http://evil.example"}
        record(
            "cross_origin_write",
            http.post(
                f"{url}/classes/csrf/examples", files={"file": ("a.jpg", photo, "image/jpeg")}, headers=evil
            ),
            "/classes",
        )
        record("rebinding_host", http.get(f"{url}/classes", headers={"Host": "attacker.example"}), "/classes")
        time.sleep(0.2)

    def edits(http: httpx.Client) -> None:
        record(
            "edit:add",
            http.post(f"{url}/classes/extra/examples", files={"file": ("e.jpg", photo, "image/jpeg")}),
            "/classes/{label}/examples",
        )
        record("edit:delete", http.delete(f"{url}/classes/extra"), "/classes/{label}")

    def saves(http: httpx.Client) -> None:
        record("save:same_name", http.post(f"{url}/models/save?name=same"), "/models/save")

    attacks = {
        "huge": [
            huge_image("png16_9400"),
            huge_image("png16_9400"),
            huge_image("rgba_8200"),
            huge_image("jpeg_8000x6000"),
        ],
        "chunked": [oversized_chunked],
        "slow": [slow_body, slow_body, slow_body],
        "origin": [cross_origin],
        "edits": [edits],
        "saves": [saves, saves, saves],
    }
    return [loop(fn) for kind in sorted(kinds) for fn in attacks[kind]]


if __name__ == "__main__":
    main()
