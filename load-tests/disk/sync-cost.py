#!/usr/bin/env python3
"""The disk's own cost of a durable append, as the audit segments make one.

Writes N appends of SIZE bytes into a file written full of zeros first (as a
segment is), each made durable one of three ways, and prints, per way, the
CPU time per append (user + system, this process) and the wall time per
append at p50 and p99:

  fdatasync  a buffered pwrite, then fdatasync (what the segments do on a
             filesystem that refuses O_DIRECT)
  direct     one pwrite of whole 4 KiB blocks to a file opened
             O_DIRECT | O_DSYNC (what they do otherwise)
  dsync      a buffered pwrite to a file opened O_DSYNC

Usage: python3 load-tests/disk/sync-cost.py [DIR] [--appends N] [--size BYTES]
(DIR: where the test file goes, default /tmp; it is removed afterwards).
Run it beside a writer (a compiler, a copy) to see the tails under load.
"""
import argparse
import mmap
import os
import resource
import time

BLOCK = 4096


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(path, mode, appends, size):
    total = (appends * size // BLOCK + 2) * BLOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    zeros = b"\0" * (1 << 20)
    for at in range(0, total, len(zeros)):
        os.pwrite(fd, zeros[: min(len(zeros), total - at)], at)
    os.fsync(fd)
    os.close(fd)
    flags = os.O_RDWR | {"fdatasync": 0, "direct": os.O_DIRECT | os.O_DSYNC, "dsync": os.O_DSYNC}[mode]
    fd = os.open(path, flags)
    buf = mmap.mmap(-1, size + 2 * BLOCK)  # page-aligned, as O_DIRECT needs
    buf.write(b"x" * (size + 2 * BLOCK))
    at, waits = 0, []
    c0 = cpu()
    for _ in range(appends):
        t = time.perf_counter()
        if mode == "direct":
            start = at - at % BLOCK
            end = -(-(at + size) // BLOCK) * BLOCK
            os.pwritev(fd, [memoryview(buf)[: end - start]], start)
        else:
            os.pwrite(fd, memoryview(buf)[:size], at)
            if mode == "fdatasync":
                os.fdatasync(fd)
        waits.append(time.perf_counter() - t)
        at += size
    spent = cpu() - c0
    os.close(fd)
    os.unlink(path)
    waits.sort()
    print(
        f"| {mode} | {spent / appends * 1e6:.1f} | {waits[len(waits) // 2] * 1e3:.3f} | {waits[int(len(waits) * 0.99)] * 1e3:.3f} |"
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir", nargs="?", default="/tmp")
    p.add_argument("--appends", type=int, default=3000)
    p.add_argument("--size", type=int, default=9 * 1024)
    a = p.parse_args()
    path = os.path.join(a.dir, f"lattice-sync-cost.{os.getpid()}")
    print(f"{a.appends} appends of {a.size} bytes in {a.dir}\n")
    print("| durable append | CPU µs per append | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    for mode in ["fdatasync", "direct", "dsync", "fdatasync", "direct"]:
        try:
            run(path, mode, a.appends, a.size)
        except OSError as e:
            print(f"| {mode} | refused: {e} | | |")


if __name__ == "__main__":
    main()
