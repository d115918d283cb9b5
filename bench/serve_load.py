"""Load check of `fewtune serve` on loopback: N concurrent clients post one photo each to /predict
for a bounded time; reports requests/s, latency percentiles and failures. Not a test.

    python bench/serve_load.py --clients 8 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from fewtune.demo import demo_photos


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the clients send requests")
    parser.add_argument("--out", type=Path, default=Path("bench/results/serve_load.json"))
    args = parser.parse_args()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    models = tempfile.mkdtemp()
    server = subprocess.Popen([sys.executable, "-m", "fewtune", "serve", "--port", str(port), "--models-dir", models])
    try:
        for _ in range(200):
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        photos = {c: sorted((demo_photos() / c).iterdir()) for c in ("strawberry", "scissors", "cup")}
        for name, files in photos.items():  # teach three classes, one photo each
            httpx.post(f"{url}/classes/{name}/examples", files={"file": (files[0].name, files[0].read_bytes(), "image/jpeg")}, timeout=60)
        queries = [p.read_bytes() for files in photos.values() for p in files[1:]]

        latencies: list[float] = []
        failures: list[str] = []
        stop = time.monotonic() + args.seconds
        lock = threading.Lock()

        def client(seed: int) -> None:
            with httpx.Client(timeout=60) as http:
                i = seed
                while time.monotonic() < stop:
                    started = time.perf_counter()
                    try:
                        response = http.post(f"{url}/predict", files={"file": ("q.jpg", queries[i % len(queries)], "image/jpeg")})
                        ok = response.status_code == 200
                    except httpx.HTTPError as exc:
                        ok, response = False, exc
                    with lock:
                        (latencies if ok else failures).append(time.perf_counter() - started if ok else str(response))
                    i += args.clients

        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=10)

    ms = np.array(latencies) * 1000
    result = {
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "requests": len(latencies) + len(failures),
        "failed": len(failures),
        "requests_per_s": round(len(latencies) / elapsed, 2),
        "latency_ms": {q: round(float(np.percentile(ms, int(q[1:]))), 1) for q in ("p50", "p95", "p99")} if len(ms) else {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if failures:
        print("first failure:", failures[0], file=sys.stderr)


if __name__ == "__main__":
    main()
