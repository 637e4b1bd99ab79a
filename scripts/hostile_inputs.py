"""Hostile inputs beyond issue 9's list: run each through `python -m dlnsim` in a fresh process
(3 GiB address-space limit, 90 s timeout, a scratch folder) and sort the outcomes:

    one-line     exit 2, exactly one line on stderr starting "dlnsim: error:", nothing left behind
    accepted     exit 0 (a legitimate input the tool handles; listed so that a reader can judge)
    diverged     exit 3 with one line (the run stopped cleanly and kept its data)
    traceback    a Python traceback on stderr
    left-behind  exit 2 but a result folder or a file was left in the scratch output folder
    other        anything else (wrong exit code, several lines, a timeout, a signal)

Usage (from the repository root): python scripts/hostile_inputs.py [-k SUBSTRING] [-v]
Prints one row per case and the counts; exits 1 if any case is `traceback`, `left-behind` or `other`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = {
    "network": {"depth": 2, "width": 2, "init": "balanced", "scale": 0.5},
    "energy": {"type": "matrix_regression", "target": "diag", "spectrum": [2.0, 1.0]},
    "dynamics": {"scheme": "gradient_descent", "step_size": 0.05, "steps": 6, "ensemble": 2, "seed": 3},
    "observers": {"every": 3},
    "output": {"figures": False},
}


def merged(**sections):
    cfg = json.loads(json.dumps(BASE))
    for sec, body in sections.items():
        if body is None:
            cfg[sec] = None
        elif isinstance(body, dict) and isinstance(cfg.get(sec), dict):
            cfg[sec].update(body)
        else:
            cfg[sec] = body
    return cfg


# (name, what to write / run). A case is a dict: "config" (a dict or raw text), optional "argv"
# (with {cfg} and {out} placeholders), optional "setup" (callable(scratch) run before).
def cases():
    C = []
    add = lambda name, **kw: C.append((name, kw))  # noqa: E731
    add("widths-empty", config=merged(network={"widths": [], "depth": None, "width": None}))
    add("widths-zero", config=merged(network={"widths": [2, 0, 2], "depth": None, "width": None}))
    add("widths-negative", config=merged(network={"widths": [2, -2], "depth": None, "width": None}))
    add("depth-zero", config=merged(network={"depth": 0}))
    add("step-size-string", config=merged(dynamics={"step_size": "abc"}))
    add("step-size-nan", config="dynamics: {step_size: .nan, steps: 5}\n")
    add("step-size-minus-inf", config="dynamics: {step_size: -.inf, steps: 5}\n")
    add("steps-fractional", config=merged(dynamics={"steps": 1.5}))
    add("steps-string-number", config=merged(dynamics={"steps": "1e3"}))
    add("beta-empty-list", config=merged(dynamics={"scheme": "rle", "beta": []}, energy={"type": "weight_decay"}))
    add("beta-negative-in-list", config=merged(dynamics={"scheme": "rle", "beta": [1, -1]}, energy={"type": "weight_decay"}))
    add("beta-nan", config="energy: {type: weight_decay}\ndynamics: {scheme: rle, beta: .nan, steps: 5}\n")
    add("ensemble-zero", config=merged(dynamics={"ensemble": 0}))
    add("ensemble-bool", config=merged(dynamics={"ensemble": True}))
    add("target-ragged", config=merged(energy={"target": [[1, 2], [3]]}))
    add("target-nan", config="energy: {target: [[.nan, 0], [0, 1]]}\nnetwork: {depth: 2, width: 2}\ndynamics: {steps: 4}\n")
    add("target-huge", config=merged(energy={"target": [[1e308, 0], [0, 1e308]], "spectrum": None}))
    add("spectrum-wrong-length", config=merged(energy={"spectrum": [1, 2, 3]}))
    add("mask-unknown-word", config=merged(energy={"type": "matrix_completion", "mask": "random"}))
    add("every-zero", config=merged(observers={"every": 0}))
    add("include-unknown", config=merged(observers={"include": ["bogus"]}))
    add("formats-svg", config=merged(output={"formats": ["svg"]}))
    add("formats-empty", config=merged(output={"formats": []}))
    add("device-cuda-7", config=merged(device={"device": "cuda:7"}))
    add("dtype-float16", config=merged(device={"dtype": "float16"}))
    add("top-level-list", config="- network\n- energy\n")
    add("empty-file", config="")
    add("tab-indent", config="network:\n\tdepth: 2\n")
    add("config-is-folder", argv=["run", "{scratch}", "--quiet"])
    add("set-without-equals", config=BASE, argv=["run", "{cfg}", "--set", "dynamics.steps", "--quiet"])
    add("set-section-scalar", config=BASE, argv=["run", "{cfg}", "--set", "network=5", "--quiet"])
    add("set-alias-bomb", config=BASE, argv=["run", "{cfg}", "--set", "dynamics.seed=[&a [1,1,1,1,1,1,1,1,1,1], "
                                              + ", ".join(["*a"] * 150) + "]", "--quiet"])
    add("resume-a-file", config=BASE, argv=["run", "--resume", "{cfg}", "--quiet"])
    add("resume-garbage-meta", setup=lambda s: _folder(s, meta="{not json"), argv=["run", "--resume", "{scratch}/fake", "--quiet"])
    add("resume-meta-is-list", setup=lambda s: _folder(s, meta="[1, 2]"), argv=["run", "--resume", "{scratch}/fake", "--quiet"])
    add("resume-config-bogus-key", setup=lambda s: _folder(s, meta=json.dumps({"status": "interrupted", "started": True}),
                                                           config="network: {depht: 2}\n"),
        argv=["run", "--resume", "{scratch}/fake", "--quiet"])
    add("resume-truncated-checkpoint", setup=lambda s: _folder(s, meta=json.dumps({"status": "interrupted", "started": True}),
                                                               config=yaml.safe_dump(BASE), checkpoint=b"PK\x03\x04trunc"),
        argv=["run", "--resume", "{scratch}/fake", "--quiet"])
    add("resume-zip-without-tree", setup=lambda s: _folder(s, meta=json.dumps({"status": "interrupted", "started": True}),
                                                           config=yaml.safe_dump(BASE), checkpoint=_zip_bytes()),
        argv=["run", "--resume", "{scratch}/fake", "--quiet"])
    add("plot-empty-folder", setup=lambda s: os.makedirs(os.path.join(s, "empty")), argv=["plot", "{scratch}/empty"])
    add("options-unknown", config=merged(dynamics={"options": {"bogus": 1}}))
    add("variant-depth-zero", config=merged(study={"variants": [{"label": "a", "set": {"network.depth": 0}}]}))
    add("variant-duplicate-labels", config=merged(study={"variants": [{"label": "a", "set": {"dynamics.seed": 1}},
                                                                      {"label": "a", "set": {"dynamics.seed": 2}}]}))
    add("file-is-a-folder", setup=lambda s: os.makedirs(os.path.join(s, "wdir")),
        config=merged(network={"init": "file", "file": "{scratch}/wdir", "depth": None, "width": None}))
    add("data-missing-outputs", setup=lambda s: np.savez(os.path.join(s, "d.npz"), inputs=np.zeros((2, 4))),
        config=merged(energy={"type": "linear_regression", "data": "{scratch}/d.npz", "target": "random", "spectrum": None}))
    add("data-shape-mismatch", setup=lambda s: np.savez(os.path.join(s, "d.npz"), inputs=np.zeros((3, 4)), outputs=np.zeros((2, 5))),
        config=merged(energy={"type": "linear_regression", "data": "{scratch}/d.npz", "target": "random", "spectrum": None}))
    add("weights-npz-object-array", setup=lambda s: np.savez(os.path.join(s, "w.npz"), W1=np.array([None, 1], dtype=object), W2=np.eye(2)),
        config=merged(network={"init": "file", "file": "{scratch}/w.npz", "depth": None, "width": None}))
    add("weights-npz-garbage", setup=lambda s: open(os.path.join(s, "w.npz"), "wb").write(b"garbage" * 9),
        config=merged(network={"init": "file", "file": "{scratch}/w.npz", "depth": None, "width": None}))
    add("weights-wrong-chain", setup=lambda s: np.savez(os.path.join(s, "w.npz"), W1=np.eye(2), W2=np.ones((3, 3))),
        config=merged(network={"init": "file", "file": "{scratch}/w.npz", "depth": None, "width": None}))
    add("energy-seed-negative", config=merged(energy={"seed": -1}))
    add("time-zero", config=merged(dynamics={"time": 0, "steps": None}))
    add("name-unicode-rtl", config=merged(output={"name": "run\u202egnp.exe"}))
    add("name-with-space", config=merged(output={"name": "my run"}))
    add("config-stem-with-space-ok", setup=lambda s: open(os.path.join(s, "my run.yaml"), "w").write(
        yaml.safe_dump(merged(output={"dir": os.path.join(s, "results"), "figures": False}))), argv=["run", "{scratch}/my run.yaml", "--quiet"])
    add("sweep-empty-axis", config={"base": BASE, "axes": {"dynamics.seed": []}}, argv=["sweep", "{cfg}", "--out", "{out}", "--quiet"])
    add("sweep-unknown-key", config={"base": BASE, "axes": {"dynamics.sead": [1]}}, argv=["sweep", "{cfg}", "--out", "{out}", "--quiet"])
    add("sweep-million-points", config={"base": BASE, "axes": {"dynamics.seed": list(range(1000)), "energy.seed": list(range(1000))}},
        argv=["sweep", "{cfg}", "--out", "{out}", "--quiet"])
    add("sweep-workers-negative", config={"base": BASE, "axes": {"dynamics.seed": [1]}}, argv=["sweep", "{cfg}", "--out", "{out}", "--workers", "-3", "--quiet"])
    add("symlink-loop-config", setup=lambda s: os.symlink(os.path.join(s, "loop.yaml"), os.path.join(s, "loop.yaml")),
        argv=["run", "{scratch}/loop.yaml", "--quiet"])
    add("config-unreadable", setup=lambda s: (open(os.path.join(s, "p.yaml"), "w").write("a: 1\n"), os.chmod(os.path.join(s, "p.yaml"), 0)),
        argv=["run", "{scratch}/p.yaml", "--quiet"])
    return C


def _folder(scratch, meta=None, config=None, checkpoint=None):
    d = os.path.join(scratch, "fake")
    os.makedirs(d)
    if meta is not None:
        open(os.path.join(d, "meta.json"), "w").write(meta)
    if config is not None:
        open(os.path.join(d, "config.yaml"), "w").write(config)
    if checkpoint is not None:
        open(os.path.join(d, "checkpoint.pt"), "wb").write(checkpoint)


def _zip_bytes():
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x.txt", "hello")
    return buf.getvalue()


def _fill(obj, scratch):
    if isinstance(obj, str):
        return obj.replace("{scratch}", scratch)
    if isinstance(obj, list):
        return [_fill(v, scratch) for v in obj]
    if isinstance(obj, dict):
        return {k: _fill(v, scratch) for k, v in obj.items()}
    return obj


def run_case(name, spec):
    with tempfile.TemporaryDirectory(prefix="dlnsim-hostile-") as scratch:
        out_dir = os.path.join(scratch, "results")
        if spec.get("setup"):
            spec["setup"](scratch)
        cfg_path = os.path.join(scratch, "c.yaml")
        config = spec.get("config")
        if config is not None:
            if isinstance(config, dict):
                config = _fill(json.loads(json.dumps(config)), scratch)
                if "base" in config:  # a sweep file
                    config["base"].setdefault("output", {})["dir"] = out_dir
                else:
                    config.setdefault("output", {})
                    if isinstance(config["output"], dict):
                        config["output"]["dir"] = out_dir
                text = yaml.safe_dump(config, sort_keys=False)
            else:
                mapping = config and not config.lstrip().startswith("-")
                text = config + f"output: {{dir: {out_dir}, figures: false}}\n" if mapping and "output" not in config else config
            with open(cfg_path, "w") as f:
                f.write(text)
        argv = [a.replace("{cfg}", cfg_path).replace("{out}", os.path.join(out_dir, "sweep")).replace("{scratch}", scratch)
                for a in spec.get("argv", ["run", "{cfg}", "--quiet"])]

        def limit():
            b = 3 * 2**30
            resource.setrlimit(resource.RLIMIT_AS, (b, b))

        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        try:
            p = subprocess.run([sys.executable, "-m", "dlnsim", *argv], capture_output=True, text=True, timeout=90,
                               cwd=scratch, env=env, preexec_fn=limit)
        except subprocess.TimeoutExpired:
            return "other", "timeout (90 s)"
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        left = os.path.isdir(out_dir) and any(os.scandir(out_dir))
        first = lines[0][:150] if lines else ""
        if "Traceback" in p.stderr:
            return "traceback", next((ln for ln in reversed(lines) if ln.strip()), "")[:150]
        if p.returncode == 2 and len(lines) == 1 and lines[0].startswith("dlnsim: error:"):
            return ("left-behind" if left else "one-line"), first
        if p.returncode == 0:
            return "accepted", first or "(silent)"
        if p.returncode == 3 and len(lines) <= 2:
            return "diverged", first
        return "other", f"exit {p.returncode}, {len(lines)} lines: {first}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    ap.add_argument("-v", action="store_true", help="print the message of every case")
    args = ap.parse_args()
    counts: dict[str, int] = {}
    for name, spec in cases():
        if args.k not in name:
            continue
        outcome, msg = run_case(name, spec)
        counts[outcome] = counts.get(outcome, 0) + 1
        print(f"{name:28s} {outcome:12s} {msg}", flush=True)
    print("counts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 1 if any(counts.get(k) for k in ("traceback", "left-behind", "other")) else 0


if __name__ == "__main__":
    sys.exit(main())
