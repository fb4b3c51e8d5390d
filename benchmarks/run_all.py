"""Runs every benchmark (each backend in its own subprocess) and writes benchmarks/results/*.json.

    python benchmarks/run_all.py            # what `make bench` runs; < 15 min on 2 CPU cores
    python benchmarks/run_all.py --quick    # tiny sizes: checks that the scripts work
    python benchmarks/run_all.py overhead losses

Then `python benchmarks/summary.py` prints the Markdown tables of docs/benchmarks.md.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("overhead", "losses", "custom_gradient", "fused_ce")
# fused_ce's full sweep (three backends, every execution mode, two sizes) takes ~12 min on 2 busy
# cores; make bench times one size with fewer rounds (not timed end to end in this change).
EXTRA_ARGS = {"fused_ce": ["--repeats", "3", "--time-tokens", "8192"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"a subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {BENCHMARKS}")
    timings = {}
    for name in args.names or BENCHMARKS:
        start = time.perf_counter()
        cmd = [sys.executable, str(HERE / f"{name}.py"), *(["--quick"] if args.quick else []),
               *EXTRA_ARGS.get(name, [])]
        subprocess.run(cmd, check=True)
        timings[name] = time.perf_counter() - start
    for name, seconds in timings.items():
        print(f"{name:16s} {seconds:6.0f} s")
    print(f"{'total':16s} {sum(timings.values()):6.0f} s")
    subprocess.run([sys.executable, str(HERE / "summary.py")], check=True)


if __name__ == "__main__":
    main()
