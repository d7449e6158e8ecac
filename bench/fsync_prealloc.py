"""Does preallocating the journal's file make its fdatasync cheaper here?

``python3 -m bench.fsync_prealloc [--appends N] [--dir D]`` (``D`` on the journal's file
system; default: a temporary directory under the current one). Each mode appends
700-byte lines, each followed by ``fdatasync`` and a 0.5 ms pause (calls 1 ms apart
at 1,000/s), and prints process CPU and wall time per append:

* ``grow``: ``O_APPEND`` to a file that grows, as the journal does;
* ``keep_size``: the same after ``fallocate(FALLOC_FL_KEEP_SIZE)`` of 64 MB (blocks
  reserved, the size still grows);
* ``overwrite``: ``pwrite`` into a 64 MB file written with zeros and fsynced first
  (PostgreSQL's WAL segments: the size never changes, so only data is flushed);
* ``direct``: the same file opened ``O_DIRECT | O_DSYNC``; each append rewrites the
  4 KB blocks its line touches from an aligned buffer, one system call and no
  ``fdatasync`` (PostgreSQL's ``wal_sync_method=open_datasync`` with direct I/O).

The issue's lead was 80 -> 55-62 µs CPU per append. 2026-12-04, this VM, under
``taskset -c 1``, five rounds in turn (CPU µs per append; wall µs):

* grow: 128.6, 118.6, 131.4, 133.5, 129.7 (mean 128.4); wall 344, 308, 333, 335, 331
* keep_size: 146.8, 112.8, 136.8, 126.9, 126.1 (mean 129.9); wall 367, 289, 341, 320, 336
* overwrite: 122.7, 95.4, 109.1, 118.7, 122.4 (mean 113.7); wall 305, 246, 280, 298, 300

2026-12-04, another VM of the same kind (``--rounds 3``; CPU µs per append, kernel in
brackets; wall µs): grow 34.8 (26.8), 36.8 (30.5), 33.6 (31.8), wall 190, 194, 199;
keep_size 34.0, 33.9, 33.3; overwrite 37.8, 38.8, 37.9, wall 172, 174, 186; direct 28.3
(18.9), 31.5 (24.7), 28.4 (20.9), wall 156, 169, 160. The same append costs a quarter of
the other VM's CPU here, and O_DIRECT saves ~6 µs of it (~1 % of an audited decision).

Overwriting a preallocated file saves ~15 µs of CPU (~11 %) and ~35 µs of wall time per
append here, less than the run-to-run spread of one mode; reserving blocks alone saves
nothing. Not adopted yet: every reader of a segment (recovery, the shipper, verify,
export, adopted journals) would have to find the end of the written lines in a
zero-filled file.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import resource
import tempfile
import time
from pathlib import Path

LINE = b"x" * 699 + b"\n"
SIZE = 64 << 20
FALLOC_FL_KEEP_SIZE = 1


def run(mode: str, directory: Path, appends: int) -> tuple[float, float, float]:
    """CPU, kernel CPU and wall µs per append (the pause left out of the wall time)."""
    path = directory / f"fsync-{mode}"
    in_place = mode in ("overwrite", "direct")
    flags = os.O_CREAT | os.O_WRONLY | (0 if in_place else os.O_APPEND)
    fd = os.open(path, flags, 0o600)
    block = mmap.mmap(-1, 1 << 16)  # page-aligned, as O_DIRECT needs
    try:
        if mode == "keep_size":
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.fallocate(fd, FALLOC_FL_KEEP_SIZE, ctypes.c_long(0), ctypes.c_long(SIZE)):
                raise OSError(ctypes.get_errno(), "fallocate")
        elif in_place:
            os.pwrite(fd, b"\0" * SIZE, 0)
            os.fsync(fd)
        if mode == "direct":
            os.close(fd)
            fd = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_DSYNC)
        offset = 0
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(appends):
            if mode == "direct":
                _append_direct(fd, block, offset)
                offset += len(LINE)
            elif mode == "overwrite":
                os.pwrite(fd, LINE, offset)
                offset += len(LINE)
                os.fdatasync(fd)
            else:
                os.write(fd, LINE)
                os.fdatasync(fd)
            time.sleep(0.0005)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        with open(path, "rb") as f:  # every mode must have written exactly the lines
            written = f.read(appends * len(LINE) + 4096)
        if written[:appends * len(LINE)] != LINE * appends or written[appends * len(LINE):].strip(
                b"\0"):
            raise RuntimeError(f"{mode}: the file does not hold the {appends} lines written")
    finally:
        os.close(fd)
        path.unlink()
    user, kernel = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    block.close()
    return ((user + kernel) / appends * 1e6, kernel / appends * 1e6,
            (wall / appends - 0.0005) * 1e6)


def _append_direct(fd: int, block: mmap.mmap, offset: int) -> None:
    """Write LINE at ``offset``: ``block`` holds the file's 4 KB block at ``offset`` (its
    written head, zeros after); the blocks the line touches go out in one durable write."""
    start = offset & ~4095
    end = offset + len(LINE)
    block[offset - start:end - start] = LINE
    os.pwritev(fd, [memoryview(block)[:(end - start + 4095) & ~4095]], start)
    last = end & ~4095
    if last > start:  # keep the head of the last block at the buffer's start
        tail = block[last - start:end - start]
        block[:len(tail)] = tail
        block[len(tail):end - start] = bytes(end - start - len(tail))


def main() -> None:
    p = argparse.ArgumentParser(prog="python3 -m bench.fsync_prealloc",
                                description=(__doc__ or "").splitlines()[0])
    p.add_argument("--appends", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dir", type=Path, default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir or Path.cwd()) as tmp:
        for _ in range(args.rounds):
            for mode in ("grow", "keep_size", "overwrite", "direct"):
                cpu, kernel, wall = run(mode, Path(tmp), args.appends)
                print(f"{mode:9} CPU {cpu:6.1f} µs per append ({kernel:5.1f} in the kernel), "
                      f"wall {wall:6.1f} µs", flush=True)


if __name__ == "__main__":
    main()
