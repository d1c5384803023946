"""A small closed-loop HTTP load generator, run in its own process.

    python -m bench.loadgen URL --concurrency 4 --seconds 10 [--gzip]

Each of `concurrency` threads keeps one keep-alive connection and sends GET after GET for
`seconds`; the latency of every request is measured from sending it to having read the whole
body. Prints one JSON line: request count, errors, elapsed seconds, body bytes, latencies (ms).
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from urllib.parse import urlsplit


def scraper(
    url: str, gzip: bool, until: float, latencies: list[float], sizes: list[int], errors: list[str]
) -> None:
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    headers = {"Accept": "text/plain", "User-Agent": "kata-pulse-bench"}
    if gzip:
        headers["Accept-Encoding"] = "gzip"
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        while time.monotonic() < until:
            started = time.perf_counter()
            try:
                connection.request("GET", target, headers=headers)
                response = connection.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as err:
                errors.append(repr(err))
                connection.close()
                connection = http.client.HTTPConnection(
                    parts.hostname or "127.0.0.1", parts.port, timeout=30
                )
                continue
            latencies.append((time.perf_counter() - started) * 1e3)
            if response.status != 200:
                errors.append(f"HTTP {response.status}")
            sizes.append(len(body))
    finally:
        connection.close()


def run(url: str, concurrency: int, seconds: float, gzip: bool) -> dict[str, object]:
    latencies: list[float] = []
    sizes: list[int] = []
    errors: list[str] = []
    started = time.monotonic()
    until = started + seconds
    threads = [
        threading.Thread(target=scraper, args=(url, gzip, until, latencies, sizes, errors))
        for _ in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "elapsed": elapsed,
        "bytes": sum(sizes),
        "latencies_ms": latencies,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--gzip", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(args.url, args.concurrency, args.seconds, args.gzip)))


if __name__ == "__main__":
    main()
