#!/usr/bin/env python3
"""Runs a command and prints `seconds peak_rss_anon_kib` on stdout.

Peak anonymous memory (RssAnon) is sampled from /proc every 5 ms over the command and all of
its descendants: file-backed pages (the page cache of a memory-mapped installer) are not the
program's own memory, so RssAnon is the honest figure for "never reads the file into memory".
"""
import os
import subprocess
import sys
import time


def rss_anon_kib(pid):
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        total += int(line.split()[1])
            with open(f"/proc/{p}/task/{p}/children") as f:
                pids.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return total


def main():
    cmd = sys.argv[1:]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, rss_anon_kib(proc.pid))
        time.sleep(0.005)
    elapsed = time.monotonic() - start
    err = proc.stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        sys.stderr.write(f"measure: {' '.join(cmd)} failed ({proc.returncode}):\n{err}")
        sys.exit(1)
    print(f"{elapsed:.3f} {peak}")


if __name__ == "__main__":
    main()
