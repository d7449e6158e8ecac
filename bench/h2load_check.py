"""Is h2load's ``--rps`` open loop? ``python3 -m bench.run --check-h2load`` measures it.

h2load (nghttp2) runs a per-client timer every ``max(10 ms, 1/rps)`` that
submits the requests due since the last tick in one burst, and a request that
finds ``-m`` streams busy waits in a pending count; the latency it logs runs
from the moment a request is actually *submitted*. So its sends come in 10 ms
bursts and any wait before submission is invisible (coordinated omission). This
check offers the baseline (Health/Check) at ``rate`` with ``--log-file`` and
compares the logged send times with the ideal schedule.
"""

from __future__ import annotations

import itertools
import math
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.loadgen import percentile
from bench.workloads import health


def check(host: str, port: int, rate: int = 1000, seconds: float = 3.0) -> dict[str, Any]:
    exe = shutil.which("h2load")
    if exe is None:
        return {"skipped": "h2load not installed (apt-get install nghttp2-client)"}
    with tempfile.TemporaryDirectory() as tmp:
        body, log = Path(tmp) / "body", Path(tmp) / "log"
        msg = health()(0)
        body.write_bytes(b"\x00" + struct.pack(">I", len(msg)) + msg)
        n = int(rate * seconds)
        subprocess.run(
            [exe, "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", str(body),
             "-n", str(n), "-c", "1", "-m", "100", "--rps", str(rate), "--log-file", str(log),
             f"http://{host}:{port}/grpc.health.v1.Health/Check"],
            check=True, capture_output=True, timeout=seconds * 10 + 30)
        rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    calls = sorted((int(r[0]) / 1e6, int(r[2]) / 1e3) for r in rows)  # (start s, duration ms)
    starts = [start for start, _ in calls]
    gaps_ms = [(b - a) * 1000 for a, b in itertools.pairwise(starts)]
    t0 = starts[0]
    lag_ms = [(s - (t0 + k / rate)) * 1000 for k, s in enumerate(starts)]
    own = [duration for _, duration in calls]
    scheduled = [o + max(0.0, lag) for o, lag in zip(own, lag_ms, strict=True)]
    burst = sum(1 for g in gaps_ms if g < 0.05) / max(len(gaps_ms), 1)
    return {
        "rate": rate, "requests": len(rows),
        "send_gap_ms": {q: percentile(gaps_ms, q) for q in (50, 90, 99)},
        "share_sent_within_50us_of_previous": burst,
        "lag_behind_schedule_ms": {q: percentile(lag_ms, q) for q in (50, 99, 100)},
        "p99_as_h2load_logs_ms": percentile(own, 99),
        "p99_from_schedule_ms": percentile(scheduled, 99),
        "verdict": ("not open loop at millisecond scale: sends come in bursts "
                    f"(median gap {percentile(gaps_ms, 50):.3f} ms, p99 gap "
                    f"{percentile(gaps_ms, 99):.1f} ms at an ideal {1000 / rate:.2f} ms) and "
                    "its latency clock starts at the actual send")
        if percentile(gaps_ms, 99) > 5 * 1000 / rate and not math.isnan(percentile(gaps_ms, 99))
        else "sends are evenly spaced at this rate",
    }


def render(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"h2load check skipped: {result['skipped']}"
    gaps, lag = result["send_gap_ms"], result["lag_behind_schedule_ms"]
    return (f"h2load --rps {result['rate']} -c 1 -m 100 on Health/Check, {result['requests']} "
            f"requests: send gaps p50/p90/p99 {gaps[50]:.3f}/{gaps[90]:.3f}/{gaps[99]:.3f} ms, "
            f"{result['share_sent_within_50us_of_previous']:.0%} sent within 50 µs of the "
            f"previous; lag behind the ideal schedule p50/p99/max {lag[50]:.1f}/{lag[99]:.1f}/"
            f"{lag[100]:.1f} ms; p99 as h2load logs it {result['p99_as_h2load_logs_ms']:.2f} ms, "
            f"from the schedule {result['p99_from_schedule_ms']:.2f} ms.\n  -> "
            f"{result['verdict']}")
