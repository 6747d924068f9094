#!/usr/bin/env python3
"""Kernels per decoded token, from two ncu runs of `gpuctl-agent bench` that differ only in
the number of tokens generated: what the longer run launched beyond the shorter one is
exactly the extra decode steps. Prints, per kernel, launches and GPU time per token, the
largest first, and the totals.

usage: kernel_profile.py NCU_SHORT.csv NCU_LONG.csv EXTRA_TOKENS [UNIT]
       kernel_profile.py - NCU.csv 1      (one run whole)
UNIT names what the difference is per ("decoded token" by default).
(each CSV from `ncu --metrics gpu__time_duration.sum --csv ...`)
"""
import collections, csv, re, sys

UNIT_NS = {"nsecond": 1, "usecond": 1e3, "msecond": 1e6, "second": 1e9}


def short(name):
    # "void candle::foo<float>(int, ...)" -> "foo<float>"; cuBLAS names kept to their stem.
    name = re.sub(r"\(.*$", "", name).replace("void ", "")
    return name.split("::")[-1][:70]


def load(path):
    per = collections.defaultdict(lambda: [0, 0.0])
    with open(path, newline="", errors="replace") as f:
        rows = [line for line in f if line.startswith('"')]
    for row in csv.DictReader(rows):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(row["Metric Value"].replace(",", "")) * UNIT_NS.get(row["Metric Unit"], 1)
        k = per[short(row["Kernel Name"])]
        k[0] += 1
        k[1] += value
    return per


def main():
    a = {} if sys.argv[1] == "-" else load(sys.argv[1])
    b, n = load(sys.argv[2]), int(sys.argv[3])
    diff = {}
    for name in set(a) | set(b):
        launches = b.get(name, [0, 0])[0] - a.get(name, [0, 0])[0]
        ns = b.get(name, [0, 0])[1] - a.get(name, [0, 0])[1]
        if launches or abs(ns) > 1000:  # a kernel can take longer without launching more often
            diff[name] = (launches / n, ns / n / 1000)
    total_launches = sum(v[0] for v in diff.values())
    total_us = sum(v[1] for v in diff.values())
    unit = sys.argv[4] if len(sys.argv) > 4 else ("run" if sys.argv[1] == "-" else "decoded token")
    print(f"per {unit}: {total_launches:.1f} kernel launches, {total_us:.1f} us of GPU time")
    print(f"{'kernel':72} {'launches/token':>15} {'us/token':>10} {'share':>6}")
    for name, (launches, us) in sorted(diff.items(), key=lambda kv: -kv[1][1]):
        print(f"{name:72} {launches:15.1f} {us:10.1f} {100 * us / max(total_us, 1e-9):5.1f}%")


if __name__ == "__main__":
    main()
