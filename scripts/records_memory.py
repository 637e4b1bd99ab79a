"""Peak memory (RSS) of `dlnsim run` against the ensemble size and the number of save points, with
the records in memory or streamed to disk (output.records), and the sizes of the files written.

    PYTHONPATH=$PWD python scripts/records_memory.py                 # the table of results/bench/README.md
    PYTHONPATH=$PWD python scripts/records_memory.py --cases 10000:250:disk 10000:1000:disk

Each case is one `python -m dlnsim run` in its own child process; its peak resident set size is
the child's ru_maxrss (resource.getrusage(RUSAGE_CHILDREN) read by a fresh wrapper process per case,
so that the maximum is that child's alone). The run: gradient descent, N = 2, d = 2, matrix
regression, observers singular_values + loss, a save point every step, one thread, no figures.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = ["10000:250:memory", "10000:1000:memory", "10000:250:disk", "10000:1000:disk",
           "100000:250:disk", "100000:1000:disk"]

_WRAPPER = """
import resource, subprocess, sys, time, json
t = time.time()
p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": p.returncode, "maxrss_kib": r.ru_maxrss, "wall_s": time.time() - t, "err": p.stderr[-2000:]}))
"""


def config(B: int, saves: int, records: str) -> dict:
    return {
        "network": {"depth": 2, "width": 2, "init": "balanced", "scale": 0.1},
        "energy": {"type": "matrix_regression", "target": "diag", "spectrum": [2.0, 1.0]},
        "dynamics": {"scheme": "gradient_descent", "step_size": 0.01, "steps": saves, "ensemble": B, "seed": 0},
        "observers": {"every": 1, "include": ["singular_values", "loss"], "entropy_measured": "false"},
        "device": {"threads": 1},
        "output": {"figures": False, "records": records, "checkpoint_every": 0},
    }


def measure(B: int, saves: int, records: str, work: str) -> dict:
    path = os.path.join(work, f"c{B}-{saves}-{records}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config(B, saves, records), f)
    out = os.path.join(work, f"run{B}-{saves}-{records}")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", _WRAPPER, sys.executable, "-m", "dlnsim", "run", path, "--out", out, "--quiet"],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    res = json.loads(p.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise SystemExit(f"case {B}:{saves}:{records} failed: {res['err']}")
    sizes = {n: os.path.getsize(os.path.join(out, n)) for n in ("arrays.npz", "metrics.csv") if os.path.exists(os.path.join(out, n))}
    with open(os.path.join(out, "meta.json")) as f:
        meta = json.load(f)
    res.update(B=B, saves=saves, records=records, sizes=sizes, records_bytes=B * (saves + 1) * 3 * 8,
               records_left=os.path.exists(os.path.join(out, "records")), status=meta["status"])
    # the run folder of a 10^5 case is 2.4 GB: remove it once measured
    subprocess.run(["rm", "-rf", out])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="*", default=DEFAULT, help="B:saves:memory|disk")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="dlnsim-records-")
    rows = []
    print("| trajectories B | save points | records | record size | peak RSS | wall | arrays.npz | metrics.csv (auto) |")
    print("|---|---|---|---|---|---|---|---|")
    for case in args.cases:
        B, saves, records = case.split(":")
        r = measure(int(B), int(saves), records, work)
        rows.append(r)
        mb = lambda x: "-" if x is None else (f"{x / 2**20:.0f} MiB" if x >= 2**20 else f"{x / 1e3:.0f} kB")  # noqa: E731
        print(f"| {r['B']} | {r['saves'] + 1} | {r['records']} | {mb(r['records_bytes'])} | {r['maxrss_kib'] / 1024:.0f} MiB "
              f"| {r['wall_s']:.0f} s | {mb(r['sizes'].get('arrays.npz'))} | {mb(r['sizes'].get('metrics.csv'))} |", flush=True)
    print(json.dumps(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
