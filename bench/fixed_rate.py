"""Server CPU per decision at one fixed rate, long enough to be read:
``python3 -m bench.fixed_rate --scenario zipf --rate 400 --seconds 10``.

``make bench``'s ``--quick`` steps measure one second (a few hundred calls), so its
CPU per decision varies by ±20 % between identical runs on this VM; to compare two
checkouts, run this in each, alternating, a few times. It starts a server like
``make bench`` does (pinned to the last CPU, the load generator on the others),
warms it (and, for ``zipf``, its cache) for ``--warmup`` seconds, then offers
``--rate`` calls/s of the scenario for ``--seconds`` and prints the server's CPU µs
per decision (every thread) and the calls that were not OK.

Issue 15 (typed events, projectors, the lifecycle), this VM, three pairs each with
168515c (before), alternating, µs of server CPU per decision: Zipf at 400/s 1,478,
1,680, 1,722 before and 1,665, 1,418, 1,740 after (means 1,627 and 1,608); uncached
at 300/s 2,497, 2,650, 2,623 before and 2,507, 2,080, 2,723 after (means 2,590 and
2,437). No consistent difference either way, within this machine's noise.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from bench import scenarios
from bench.cost import HEADERS, measure
from bench.server import Server


async def fixed(scenario: str, rate: float, seconds: float, warmup: float) -> str:
    last = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, os.sched_getaffinity(0) - {last} or {last})
    scen = next(s for s in scenarios.SCENARIOS if s.key == scenario)
    server = Server("fixed", scenarios.SERVERS[scen.server], cpus={last}).start()
    try:
        row = await measure(server, scenario, scen.path, scen.body("f"), rate, seconds, warmup,
                            headers=server.headers(HEADERS), per_call=scen.batch)
    finally:
        server.stop()
    return (f"{scenario} at {rate:.0f}/s for {seconds:.0f} s: "
            f"{row['cpu_us'] / scen.batch:.0f} µs server CPU per decision, "
            f"{row['not_ok']} of {row['calls']} calls not OK"
            + (f"; PROBLEMS: {row['problems']}" if row["problems"] else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--scenario", choices=[s.key for s in scenarios.SCENARIOS
                                          if s.key != "baseline"], default="zipf")
    p.add_argument("--rate", type=float, default=400.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=4.0)
    args = p.parse_args()
    print(asyncio.run(fixed(args.scenario, args.rate, args.seconds, args.warmup)))


if __name__ == "__main__":
    main()
