"""The Python case of `cargo xtask bench --only python`: a loop of
os.close(os.open(PATH, os.O_RDONLY)) whose open is made five Python frames deep
(<module> <- level1 <- level2 <- level3 <- loop).

usage: py_open_close.py WARMUP ITERATIONS RESULT PATH
Prints READY and waits for a line on stdin; runs WARMUP iterations, prints WARM and waits
for a line; runs ITERATIONS timed iterations, writes `ns_per_iter=... iterations=...
elapsed_s=...` (the C workload's format) to RESULT, prints DONE and waits for stdin to
reach EOF. So a tracer can attach, and the bench can read its BPF counters, around the
timed loop alone.
"""
import os
import sys
import time


def loop(n, path):
    flags = os.O_RDONLY
    started = time.perf_counter_ns()
    for _ in range(n):
        os.close(os.open(path, flags))
    return time.perf_counter_ns() - started


def level3(n, path):
    return loop(n, path)


def level2(n, path):
    return level3(n, path)


def level1(n, path):
    return level2(n, path)


def main():
    warmup, iterations, result, path = sys.argv[1:]
    warmup, iterations = int(warmup), int(iterations)
    print("READY", flush=True)
    sys.stdin.readline()
    level1(warmup, path)
    print("WARM", flush=True)
    sys.stdin.readline()
    elapsed = level1(iterations, path)
    with open(result, "w") as out:
        out.write(
            f"ns_per_iter={elapsed / iterations:.1f} iterations={iterations} "
            f"elapsed_s={elapsed / 1e9:.6f}\n"
        )
    print("DONE", flush=True)
    sys.stdin.read()


main()
