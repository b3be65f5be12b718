"""The phone app's costs (docs/BENCHMARKS.md "The phone app"): bundle size, time to interactive
on a throttled mid-range phone, and encrypting a 5 MB photo with the app's own code.

    .venv/bin/python -m bench.phone [--runs 5] [--out FILE]

* ``bundle``: each served file's size and its gzip size (level 9, what a web server sends);
* ``tti_ms``: Debian's Chromium in mobile emulation with Chromium's network throttling (150 ms
  round trip, 1.6 Mbit/s down, 750 kbit/s up: "fast 3G") and 4x CPU slowdown, from navigation
  to the first screen ready (the worker started and libsodium loaded); first load with an empty
  cache, median over ``--runs`` fresh browsers;
* ``encrypt_5mb_ms``: the app's attachment encryption (secretstream, src/protocol/attachments.ts)
  of 5 MB under Node on this machine, median of ``--runs``; the upload itself is the relay's
  (bench/attachments.py measures it).

Writes JSON to bench/results/phone.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import time
from pathlib import Path
from typing import Any

from clients.phone.serve import PhoneConfig
from tests.browser import FULL_CHROMIUM
from tests.phone.node import build, run_driver
from tests.phone.phone_world import ARGS, PHONE_VIEWPORT, bound_socket, running_phone

OUT = Path(__file__).with_name("results") / "phone.json"


def bundle_sizes(dist: Path) -> dict[str, dict[str, int]]:
    return {f.name: {"bytes": f.stat().st_size,
                     "gzip": len(gzip.compress(f.read_bytes(), compresslevel=9))}
            for f in sorted(dist.iterdir()) if f.name != "MANIFEST.sha256"}


async def time_to_interactive(runs: int) -> list[float]:
    from playwright.async_api import async_playwright
    sock, _ = bound_socket()
    found = []
    async with running_phone(PhoneConfig("http://127.0.0.1:9"), sock) as origin, \
            async_playwright() as pw:
        for _ in range(runs):
            # The whole browser, as a phone runs it, not the tests' headless shell: its
            # figures stay comparable with the earlier runs' (docs/BENCHMARKS.md).
            browser = await pw.chromium.launch(executable_path=FULL_CHROMIUM, headless=True,
                                               args=ARGS)
            try:
                context = await browser.new_context(viewport=PHONE_VIEWPORT, is_mobile=True,
                                                    has_touch=True)
                page = await context.new_page()
                cdp = await context.new_cdp_session(page)
                await cdp.send("Network.enable")
                await cdp.send("Network.emulateNetworkConditions", {
                    "offline": False, "latency": 150, "downloadThroughput": 1_600_000 / 8,
                    "uploadThroughput": 750_000 / 8})
                await cdp.send("Emulation.setCPUThrottlingRate", {"rate": 4})
                start = time.perf_counter()
                await page.goto(origin)
                await page.locator("#screen-enrol").wait_for(timeout=120_000)
                found.append((time.perf_counter() - start) * 1000)
            finally:
                await browser.close()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.phone", description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    dist = build().parent / "dist"
    sizes = bundle_sizes(dist)
    tti = asyncio.run(time_to_interactive(args.runs))
    encrypt = run_driver({"op": "bench_encrypt", "size": 5_000_000, "runs": args.runs})
    result: dict[str, Any] = {
        "bundle": sizes,
        "bundle_gzip_total": sum(v["gzip"] for v in sizes.values()),
        "tti_ms": round(statistics.median(tti)),
        "encrypt_5mb_ms": round(encrypt["median_ms"], 1),
    }
    print(f"{'file':<22}{'bytes':>10}{'gzip':>10}")
    for name, v in sizes.items():
        print(f"{name:<22}{v['bytes']:>10}{v['gzip']:>10}")
    print(f"{'total gzip':<22}{'':>10}{result['bundle_gzip_total']:>10}")
    print(f"time to interactive (fast 3G, 4x CPU): {result['tti_ms']} ms (median of {args.runs})")
    print(f"encrypt a 5 MB photo (Node, app code): {result['encrypt_5mb_ms']} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
