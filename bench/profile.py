"""Where the server's CPU goes on the uncached Decide path: py-spy under open-loop load.

``python3 -m bench.run --profile`` starts a default server (audit, cache and
metrics on), offers distinct Decide calls at ``--profile-rate`` (1,000/s),
records ``py-spy record --native --threads`` twice (raw collapsed stacks for
the numbers, then an SVG flame graph) and reports:

* the exact CPU time of each server thread during the recording (from
  /proc/PID/task/TID/stat; py-spy names the threads by OS id), per decision;
* each thread's CPU split over *layers* in proportion to its busy samples: a
  sample's layer is its innermost frame that belongs to a known part of the
  path (grpc, conversion, engine hop, regopy, canonical JSON / hashing, cache,
  audit, metrics ...). Idle samples (a thread blocked in a queue, epoll,
  psycopg wait) are dropped first, so a mostly idle thread does not lend its
  waits to a layer; without ``--native`` that is judged from the last Python
  frame, so time inside C (grpc's Cython core, rego-cpp) is credited to the
  Python frame that called it;
* the top functions by self and by inclusive busy samples.

By default py-spy reads Python stacks without pausing the server. ``--native``
also unwinds C/C++/Cython frames but pauses the server for every sample,
which on this machine collapses its throughput (calls time out): use it only
to look inside grpc or rego-cpp, not for numbers.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

_WAIT = re.compile(r"epoll_wait|epoll_pwait|\bpoll \(|ppoll|\bselect \(|accept4? \(|"
                   r"nanosleep|pthread_cond_(timed)?wait|sem_(timed)?wait|futex|"
                   r"PyThread_acquire_lock_timed|_queue_SimpleQueue_get")
_GIL = re.compile(r"take_gil|PyEval_RestoreThread|PyEval_AcquireThread|PyGILState_Ensure|"
                  r"Py_XDECREF \(object\.h|drop_gil")
# Without --native a thread blocked in C shows its last Python frame as the leaf.
_IDLE_LEAF_PY = re.compile(r"^(_worker \(.*concurrent/futures/thread\.py|Thread\.run \(|"
                           r"\w*\.?select \(.*selectors\.py|serve_forever|(Connection|Condition|"
                           r"Event|Barrier)\.wait \(|wait\w* \(.*psycopg/waiting|sleep \(|"
                           r"_poll_wrapper)")
_IDLE_PY = re.compile(r"_queue_SimpleQueue_get|EpollSelector\.select|_PollLikeSelector\.select|"
                      r"serve_forever|Condition\.wait|Event\.wait")
# (layer, pattern on one frame); the innermost frame matching any pattern decides the layer.
LAYERS: tuple[tuple[str, re.Pattern[str]], ...] = tuple((name, re.compile(p)) for name, p in (
    ("regopy evaluation (rego-cpp, engine threads)",
     r"regopy/|rego_shared|librego|_regopy|regopy_calls\.py|RegopyEngine\._(query|decide_one) |"
     r"parse_decision|output_value|_violation \("),
    ("canonical input JSON + SHA-256 (cache key; the audit record reuses the JSON)",
     r"decision_cache_key|canonical_input|cache_key_of_json|domain/cache_key\.py"),
    ("audit (record JSON, journal, fsync)", r"journal|pg_audit|domain/audit\.py|_request_json|"
     r"_keep_many|AuditEntry|fsync|fdatasync"),
    ("canonical JSON (other)", r"domain/canonical\.py"),
    ("decision cache (get/put)", r"memory_cache|tiered_cache|redis_cache"),
    ("metrics (decision_made)", r"acgs/metrics\.py"),
    ("proto <-> domain conversion", r"entrypoints/convert\.py"),
    ("request parse / status mapping (grpc_registry)", r"grpc_registry\.py|status\.py"),
    ("engine executor hop (thread pool, futures)",
     r"regopy_engine\.py|concurrent/futures|asyncio/futures\.py|wrap_future|"
     r"call_soon_threadsafe|_chain_future|run_in_executor|_copy_future_state|_write_to_self"),
    ("decision service (ids, timing, escalation)", r"service_layer/|domain/model\.py|uuid"),
    ("servicer / callers", r"governance_servicer\.py|callers\.py"),
    ("protobuf (upb)", r"google/protobuf|_message\.|upb"),
    ("grpc.aio (Cython + C-core)", r"grpc/|cygrpc|libgrpc|_cython"),
    ("event loop: asyncio + grpc.aio Cython (one layer without --native)",
     r"asyncio/|selectors\.py|_asyncio"),
    ("python runtime", r"libpython|python3\.11|PyObject|_Py|gc_collect"),
))


_CANONICAL = "canonical JSON (other)"
assert LAYERS[3][0] == _CANONICAL


def _frames(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rstrip("\n").rpartition(" ")
    return stack.split(";"), int(count)


def _layer(frames: list[str]) -> str:
    layer = next((lay for f in reversed(frames) for lay, pat in LAYERS if pat.search(f)), "other")
    if layer == _CANONICAL:  # canonical JSON serves two callers: say which
        joined = ";".join(frames)
        for name, pat in LAYERS[1:3]:
            if pat.search(joined):
                return name
    return layer


def _thread(frame: str) -> tuple[int, str]:
    m = re.match(r"^thread \((\d+|0x[0-9a-fA-F]+)\): (.*)$", frame)
    if not m:
        return 0, frame
    return int(m.group(1), 0), re.sub(r"_\d+$", "", m.group(2))


def _state(frames: list[str]) -> str:
    """``busy``, ``gil`` (runnable, waiting for the GIL) or ``idle`` (blocked, waiting)."""
    joined = ";".join(frames)
    if _WAIT.search(";".join(frames[-3:])) or _IDLE_PY.search(joined):
        return "gil" if _GIL.search(joined) and not _IDLE_PY.search(joined) else "idle"
    return "idle" if _IDLE_LEAF_PY.match(frames[-1]) else "busy"


def analyse(raw: str, thread_cpu_s: dict[int, float], decisions: float) -> dict[str, Any]:
    """Exact CPU per thread (from /proc), split over layers by that thread's busy samples."""
    names: dict[int, str] = {}
    busy_by: dict[int, Counter[str]] = {}
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        if not line.strip():
            continue
        frames, n = _frames(line)
        tid, name = _thread(frames[0])
        names[tid] = name
        state = _state(frames)
        counts[state] += n
        if state != "busy":
            continue
        layer = _layer(frames)
        busy_by.setdefault(tid, Counter())[layer] += n
        self_fn[_short(frames[-1])] += n
        for fn in {_short(f) for f in frames[1:]}:
            incl_fn[fn] += n
    per = 1e6 / max(decisions, 1)
    cpu_total = sum(thread_cpu_s.values())
    threads: dict[str, float] = {}
    layers: dict[str, float] = {}
    for tid, cpu in thread_cpu_s.items():
        if cpu <= 0:
            continue
        name = names.get(tid, "threads py-spy did not sample (C threads: grpc core ...)")
        threads[name] = threads.get(name, 0.0) + cpu * per
        split = busy_by.get(tid)
        if not split:
            key = f"unattributed: {name}"
            layers[key] = layers.get(key, 0.0) + cpu * per
            continue
        n = sum(split.values())
        for layer, k in split.items():
            layers[layer] = layers.get(layer, 0.0) + cpu * per * k / n
    busy = counts["busy"]

    def top(c: Counter[str], k: int) -> list[tuple[str, float]]:
        return [(fn, 100 * v / max(busy, 1)) for fn, v in c.most_common(k)]

    return {"samples": dict(counts), "cpu_us_per_decision": cpu_total * per,
            "threads_us": sorted(threads.items(), key=lambda kv: -kv[1]),
            "layers_us": sorted(layers.items(), key=lambda kv: -kv[1]),
            "top_self": top(self_fn, 15), "top_inclusive": top(incl_fn, 25)}


def _short(frame: str) -> str:
    """``func (path/to/file.py:123)`` → ``func (file.py)``; native addresses → their module."""
    m = re.match(r"^(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    func, where = m.groups()
    where = where.rsplit("/", 1)[-1]
    return f"[native] {where}" if func.startswith("0x") else f"{func} ({where})"


async def record(pid: int, out: Path, seconds: int, *, fmt: str, native: bool,
                 rate: int = 100) -> str:
    """Run py-spy on ``pid`` for ``seconds``; returns its summary line.

    ``native`` unwinds C/C++/Cython frames too (grpc core, rego-cpp) but must pause the
    process for every sample; without it py-spy reads the Python stacks without pausing.
    """
    exe = shutil.which("py-spy")
    if exe is None:
        raise RuntimeError("py-spy not found: pip install py-spy")
    mode = ["--native"] if native else ["--nonblocking"]
    proc = await asyncio.create_subprocess_exec(
        exe, "record", *mode, "--threads", "--rate", str(rate), "--format", fmt, "-o", str(out),
        "--pid", str(pid), "--duration", str(seconds),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"py-spy failed ({proc.returncode}): {stderr.decode()[-500:]}")
    return (stdout + stderr).decode().strip().splitlines()[0] if stdout or stderr else ""


def render(result: dict[str, Any]) -> str:
    total = result["cpu_us_per_decision"]
    lines = [f"samples: {result['samples']} (idle waits dropped; 'gil' = runnable but waiting "
             f"for the GIL); server CPU {total:.0f} µs per decision", "",
             "| thread (CPU from /proc) | µs per decision | share |", "| --- | ---: | ---: |"]
    lines += [f"| {t} | {us:.0f} | {100 * us / max(total, 1e-9):.1f} % |"
              for t, us in result["threads_us"]]
    lines += ["", "| layer (innermost known frame; each thread's CPU split by its busy samples) "
              "| µs per decision | share |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {us:.0f} | {100 * us / max(total, 1e-9):.1f} % |"
              for name, us in result["layers_us"]]
    for title, key in (("self", "top_self"), ("inclusive", "top_inclusive")):
        lines += ["", f"| top functions, {title} | % of busy samples |", "| --- | ---: |"]
        lines += [f"| `{name}` | {p:.1f} % |" for name, p in result[key]]
    return "\n".join(lines)
