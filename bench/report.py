"""Results: bench/results/bench.json, bench/results/latency.png and a README-ready table.

Each target's scenarios have their own key of bench.json (:data:`KEYS`; direct keeps
``scenarios``), as do its ratios (:data:`RATIO_KEYS`; direct keeps ``ratios``); tables
carry a ``target`` column and the plot draws HAProxy's lines dash-dotted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
KEYS = {"direct": "scenarios", "haproxy": "scenarios_haproxy"}
RATIO_KEYS = {"direct": "ratios", "haproxy": "ratios_haproxy"}
EDGE_NOTE = (
    "Target haproxy: the same server behind HAProxy (haproxy/haproxy.cfg.tmpl rendered by "
    "acgs.edge, one upstream, load to its h2c listener), HAProxy on the load generator's CPU; "
    "server CPU excludes HAProxy's, which has its own column.")


def by_target(results: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(target, its scenarios by key) for each target that has results, direct first."""
    for target, key in KEYS.items():
        if results.get(key):
            yield target, results[key]


def rows(results: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(scenario key, target, scenario) for every measured pair, scenario by scenario."""
    targets = list(by_target(results))
    keys = dict.fromkeys(k for _, scen in targets for k in scen)
    return [(k, t, scen[k]) for k in keys for t, scen in targets if k in scen]


def at_rate(scenario: dict[str, Any], rate: float) -> dict[str, Any] | None:
    """The step offered exactly ``rate`` (the last one if it was retried)."""
    found = [s for s in scenario["steps"] if abs(s["offered"] - rate) < 0.5]
    return found[-1] if found else None


def best_step(scenario: dict[str, Any]) -> dict[str, Any] | None:
    best = scenario.get("max_sustainable")
    return at_rate(scenario, best) if best is not None else None


def ratios(results: dict[str, Any], target: str = "direct") -> dict[str, float | None]:
    """The project's two goals: full path vs baseline, in rate and in p99 at 1,000/s, both
    measured through ``target``."""
    scen = results.get(KEYS[target]) or {}
    out: dict[str, float | None] = {"max_rate_ratio": None, "p99_at_1000_ratio": None}
    if "baseline" not in scen or "uncached" not in scen:
        return out
    base, full = scen["baseline"].get("max_sustainable"), scen["uncached"].get("max_sustainable")
    if base and full is not None:
        out["max_rate_ratio"] = full / base
    b, f = at_rate(scen["baseline"], 1000), at_rate(scen["uncached"], 1000)
    if b and f and b["p99_ms"] > 0:
        out["p99_at_1000_ratio"] = f["p99_ms"] / b["p99_ms"]
    return out


def _fmt(value: Any, spec: str = ".2f", none: str = "—") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, spec)


def _row(name: str, target: str, rate: str, s: dict[str, Any] | None) -> str:
    if s is None:
        return f"| {name} | {target} | {rate} |" + " — |" * 10
    hit = _fmt(s["hit_rate"], ".1%") if s["hit_rate"] is not None else "—"
    errors = str(s["errors"]) + (f" {s['error_codes']}" if s["errors"] else "")
    return (f"| {name} | {target} | {rate} | {s['achieved']:.0f} | {s['p50_ms']:.2f} | "
            f"{s['p90_ms']:.2f} | {s['p99_ms']:.2f} | {s['p999_ms']:.2f} | {errors} | {hit} | "
            f"{_cpu(s)} | {_edge_cpu(s)} | {s['rss_mb']:.0f} |")


def _cpu(s: dict[str, Any]) -> str:
    helper = s.get("helper_cpu_us_per_decision")
    extra = f" (+{helper:.0f} PG)" if helper else ""
    return f"{s['cpu_us_per_decision']:.0f}{extra}"


def _edge_cpu(s: dict[str, Any]) -> str:
    return _fmt(s.get("haproxy_cpu_us_per_decision"), ".0f")


HEADER = ("| scenario | target | offered /s | achieved /s | p50 ms | p90 ms | p99 ms | p99.9 ms "
          "| errors | cache hits | server CPU µs/decision (+ embedded PostgreSQL) "
          "| HAProxy CPU µs/decision | RSS MB |\n"
          "| --- | --- |" + " ---: |" * 11)


def markdown(results: dict[str, Any]) -> str:
    lines = ["Highest offered rate with every call OK and p99 within the limit "
             "(5 ms; 50 ms per DecideBatch call), and the measurements at that rate:", "",
             HEADER]
    for key, target, s in rows(results):
        best = s.get("max_sustainable")
        rate = f"**{best:.0f}**" if best is not None else "none passed"
        if s.get("failed_below_max"):
            rate += f" (failed at {', '.join(f'{r:.0f}' for r in s['failed_below_max'])})"
        title = s["title"].split(": ", 1)[-1] if s["title"].startswith(key) else s["title"]
        lines.append(_row(f"{key}: {title}", target, rate, best_step(s)))
    lines += ["", "At 1,000 decisions/s offered:", "", HEADER]
    lines += [_row(key, target, "1000", at_rate(s, 1000)) for key, target, s in rows(results)]
    audit = "on" if results["features"].get("audit") else "NOT WIRED in this build"
    measured = [t for t, _ in by_target(results)]
    got = {t: results.get(RATIO_KEYS[t]) or ratios(results, t) for t in measured}

    def each(name: str, spec: str) -> str:
        return ", ".join(f"{t} **{_fmt(got[t][name], spec)}**" for t in measured)

    lines += ["", f"- full path (uncached, audit {audit}, metrics on) highest sustainable rate "
              f"÷ baseline's (each through the same target): {each('max_rate_ratio', '.3f')}",
              f"- full path p99 at 1,000/s ÷ baseline p99 at 1,000/s: "
              f"{each('p99_at_1000_ratio', '.2f')}"]
    if "haproxy" in measured:
        lines += ["", EDGE_NOTE]
    return "\n".join(lines)


def steps_table(results: dict[str, Any]) -> str:
    lines = ["| scenario | target | offered /s | achieved /s | p50 | p90 | p99 | p99.9 | errors "
             "| hits | CPU µs | HAProxy CPU µs | RSS MB | gen lag p99 ms | pass |",
             "|" + " --- |" * 15]
    for key, target, s in rows(results):
        for st in s["steps"]:
            hit = _fmt(st["hit_rate"], ".0%") if st["hit_rate"] is not None else "—"
            lines.append(
                f"| {key} | {target} | {st['offered']:.0f} | {st['achieved']:.0f} | "
                f"{st['p50_ms']:.2f} | {st['p90_ms']:.2f} | {st['p99_ms']:.2f} | "
                f"{st['p999_ms']:.2f} | {st['errors']} | {hit} | {_cpu(st)} | {_edge_cpu(st)} | "
                f"{st['rss_mb']:.0f} | {st['gen_lag_p99_ms']:.2f} | "
                f"{'yes' if st['pass'] else 'no'} |")
    return "\n".join(lines)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str, allow_nan=True) + "\n")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    styles = {"baseline": ("tab:gray", 2.5), "uncached": ("tab:red", 2.5),
              "zipf": ("tab:blue", 1.2), "audit_off": ("tab:orange", 1.2),
              "batch": ("tab:green", 1.2)}
    for key, target, s in rows(results):
        color, width = styles.get(key, ("black", 1.0))
        steps = s["steps"]
        x = [st["offered"] for st in steps]
        if target != "direct":  # through HAProxy: p99 and throughput, dash-dotted, hollow
            hollow = {"marker": "s", "ms": 3.5, "mfc": "none", "color": color, "lw": width}
            if key != "batch":
                ax.plot(x, [st["p99_ms"] for st in steps], "-.", label=f"{key} p99 {target}",
                        **hollow)
            ax2.plot(x, [st["achieved"] for st in steps], "-.", label=f"{key} {target}",
                     **hollow)
            continue
        if key != "batch":
            for q, style in (("p50_ms", ":"), ("p99_ms", "-"), ("p999_ms", "--")):
                label = f"{key} {q[:-3].replace('p999', 'p99.9')}"
                ax.plot(x, [st[q] for st in steps], style, color=color, lw=width, marker="o",
                        ms=3, label=label if key in ("baseline", "uncached") or q == "p99_ms"
                        else None)
        ax2.plot(x, [st["achieved"] for st in steps], "-o", color=color, lw=width, ms=3, label=key)
    ax.axhline(5.0, color="black", lw=0.8, ls=(0, (8, 4)), label="5 ms target")
    ax.set(xscale="log", yscale="log", xlabel="offered decisions/s (calls/s for baseline)",
           ylabel="latency from scheduled send, ms",
           title="Latency vs offered rate (p50 dotted, p99 solid, p99.9 dashed;\n"
                 "through HAProxy: p99 dash-dotted, hollow squares)")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    top = max([st["offered"] for _, _, s in rows(results) for st in s["steps"]] or [1])
    ax2.plot([0, top], [0, top], color="black", lw=0.6, ls=":", label="achieved = offered")
    ax2.set(xlabel="offered /s", ylabel="achieved /s", title="Throughput")
    ax2.legend(fontsize=7)
    ax2.grid(True, alpha=0.3)
    fig.suptitle(results["meta"]["note"], fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
