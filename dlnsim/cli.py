"""The `dlnsim` command line.

    dlnsim run CONFIG [--set KEY=VALUE ...] [--out DIR] [--quiet] [--bias-check]
    dlnsim run --resume RUN_DIR [--quiet]
    dlnsim plot RUN_DIR [--format png pdf]
    dlnsim validate CONFIG [--set KEY=VALUE ...] [--print]
    dlnsim sweep SWEEP [--out DIR] [--executor local|slurm|submitit-local] ...   (dlnsim.sweep)

`python -m dlnsim` is the same. Exit codes: 0 completed; 2 a user error (bad config, missing file,
malformed YAML; one line "dlnsim: error: ..." on stderr, no traceback); 3 the run diverged;
130 / 143 interrupted by SIGINT / SIGTERM (resume with --resume); 1 an internal error (a bug: the
traceback is printed and kept in meta.json).

A progress bar (tqdm: rate, ETA) is shown on stderr when it is a terminal; --quiet silences it and
the one-line summaries (scripts and tests).
"""
from __future__ import annotations

import argparse
import os
import sys

import yaml

from ._guard import namespace_problem

if namespace_problem():  # the checkout folder taken for the package: the imports below would fail obscurely
    print(f"dlnsim: error: {namespace_problem()}", file=sys.stderr)
    sys.exit(2)

from . import sweep  # noqa: E402
from .builders import batch_size  # noqa: E402
from .config import ConfigError, load_config, variant_configs  # noqa: E402
from .lifecycle import Status  # noqa: E402
from .results import ARRAYS, META, read_meta  # noqa: E402
from .runner import resume, run  # noqa: E402

__all__ = ["main", "build_parser"]


def _error(msg: str) -> int:
    print(f"dlnsim: error: {msg}", file=sys.stderr)
    return 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors: same one-line form, exit 2
        self.exit(2, f"dlnsim: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="dlnsim",
        description="Simulate deep linear networks next to their geometric theory.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  dlnsim run configs/saxe_modes.yaml\n"
            "  dlnsim run configs/reference.yaml --set dynamics.scheme=rle --set dynamics.beta=10\n"
            "  dlnsim run --resume results/saxe_modes-20250101-120000\n"
            "  dlnsim plot results/saxe_modes-20250101-120000\n\n"
            "exit codes: 0 completed, 2 user error, 3 diverged, 130/143 interrupted (SIGINT/SIGTERM), 1 internal error"
        ),
    )
    sub = p.add_subparsers(dest="command", metavar="{run,plot,validate,sweep}", parser_class=_Parser)
    sub.required = True

    r = sub.add_parser("run", help="run a YAML config into a new result folder (or resume one)")
    r.add_argument("config", nargs="?", help="YAML config file (see configs/reference.yaml)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set dynamics.beta=10 (value parsed as YAML); repeatable")
    r.add_argument("--out", metavar="DIR", help="write the result folder exactly here (must not exist or be empty)")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run or study from its checkpoint")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary lines")
    r.add_argument("--allow-showcase-anywhere", action="store_true",
                   help="let output.showcase write its .png outside <output.dir>/showcase/")
    r.add_argument("--bias-check", action="store_true",
                   help="then rerun at step_size/2 (same seed and time) into RUN_DIR/bias_check_h2 and report the "
                        "difference and the Richardson-extrapolated headline moments with standard errors (bias_check.csv)")

    pl = sub.add_parser("plot", help="(re)draw the figures of a result folder from its files")
    pl.add_argument("run_dir", metavar="RUN_DIR")
    pl.add_argument("--format", dest="formats", nargs="+", choices=("png", "pdf"), help="formats (default: the run's)")

    v = sub.add_parser("validate", help="check a config and print what it resolves to")
    v.add_argument("config")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    v.add_argument("--print", dest="print_config", action="store_true", help="print the fully resolved config")

    s = sub.add_parser("sweep", help="parameter sweeps (dlnsim.sweep)")
    sweep.add_arguments(s)
    return p


def _cmd_run(args) -> int:

    if args.resume:
        if args.bias_check:
            return _error("--bias-check applies to a new run, not to --resume")
        if args.config or args.overrides or args.out:
            return _error("--resume RUN_DIR takes no CONFIG, --set or --out (the folder's config.yaml is used)")
        out = resume(args.resume, quiet=args.quiet)
    else:
        if not args.config:
            return _error("run needs a CONFIG file (or --resume RUN_DIR)")
        overrides = list(args.overrides or ())
        if overrides and not any(o.split("=", 1)[0].strip() == "output.showcase" for o in overrides):
            # A modified run is not the showcase: keep the curated figure unless asked explicitly.
            overrides.append(("output.showcase", None))
        cfg = load_config(args.config, overrides)
        if args.bias_check and variant_configs(cfg):
            return _error("--bias-check needs a plain run, not a study (run one variant with --set, e.g. dynamics.scheme=...)")
        out = run(cfg, args.out, quiet=args.quiet, allow_showcase_anywhere=args.allow_showcase_anywhere)
        if args.bias_check and out.status == Status.COMPLETED:
            from .bias_check import bias_check, format_table  # the extra run and its report only when asked

            rows, path = bias_check(cfg, out.run_dir, quiet=args.quiet)
            print(format_table(rows))
            print(f"bias check: {path}")
    if out.status in (Status.FAILED, Status.DIVERGED) and out.message:
        print(f"dlnsim: error: {out.message} ({out.run_dir})", file=sys.stderr)
    return out.exit_code


def _cmd_plot(args) -> int:
    from .plotting import plot_path  # matplotlib is imported only by the commands that draw
    from .sweep.plots import plot_sweep

    d = args.run_dir
    if os.path.isdir(d) and os.path.exists(os.path.join(d, sweep.spec.MANIFEST)):  # a sweep folder
        for p in plot_sweep(d, tuple(args.formats or ("png", "pdf"))):
            print(p)
        return 0
    if not os.path.isdir(d) or not os.path.exists(os.path.join(d, META)):
        return _error(f"{d}: not a dlnsim result folder (no meta.json)")
    if not read_meta(d).get("study") and not os.path.exists(os.path.join(d, ARRAYS)):
        return _error(f"{d}: has no arrays.npz yet (the run wrote no data)")
    paths = plot_path(d, args.formats)
    for p in paths:
        print(p)
    return 0


def _cmd_validate(args) -> int:

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None), end="")
        return 0
    runs = variant_configs(cfg) or [("run", cfg)]
    for label, c in runs:
        n, d = c["network"], c["dynamics"]
        print(f"ok: {args.config} [{label}]: {d['scheme']}, widths {n['widths']}, init {n['init']}, energy "
              f"{c['energy']['type']}, {d['steps']} steps of h={d['step_size']:g} (T={d['time']:g}), "
              f"B={batch_size(c)}, save every {c['observers']['every']}")
    return 0


def _cmd_sweep(args) -> int:
    return int(sweep.main(args) or 0)


def main(argv=None) -> int:
    """Entry point of the `dlnsim` console script; returns the exit code."""
    if namespace_problem():  # the checkout folder taken for the package: nothing below would work
        return _error(namespace_problem())
    args = build_parser().parse_args(argv)
    handlers = {"run": _cmd_run, "plot": _cmd_plot, "validate": _cmd_validate, "sweep": _cmd_sweep}
    try:
        return handlers[args.command](args)
    except (ConfigError, ValueError, OSError) as e:  # user errors and the environment: one line
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return _error(msg)
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
