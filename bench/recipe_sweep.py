"""`python -m bench.recipe_sweep CATALOGUE --variant NAME='OPTIONS' ...`: recipe variants of a
preset trained side by side on one device, each a `python -m finetune` of its own.

On a GPU a from-scratch step is bound by kernel launches, not arithmetic (issue 13: ResNet-50
at batch 128 and ResNet-18 at 64 took 33 and 15 ms a step on an H200), so variants sharing the
device each lose less than their share of it. Each keeps the preset's time budget and fits its
epochs to the pace it gets, so a variant is only ever compared with the others of the same run
(include the preset as it is, ``base=''``); one that wins here has run with fewer epochs than it
would alone. Prints one JSON line a variant as it ends (held-out P@4 and mAP@R by
finetune.evaluate's protocol, epochs, seconds). On one H200, one variant alone took 188-206 s of
wall time with the large preset's 3 minutes; four side by side had not ended after 262 s, three
not after 405 s. ``--one-at-a-time`` runs them alone, one after another: figures that compare
with a single run's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import validation_curve, validation_figures


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``name=--option value ...`` -> (name, finetune's extra arguments)."""
    name, _, options = text.partition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"{text!r}: a variant is NAME=OPTIONS (OPTIONS may be empty)")
    return name, shlex.split(options)


def train_side_by_side(
    catalogue: Path,
    preset: str,
    variants: list[tuple[str, list[str]]],
    tmp: Path,
    report: Callable[[dict], None],
    at_once: int | None = None,
) -> None:
    """Train the variants, ``at_once`` at a time (default: all), and ``report`` each as it ends.
    Stopped early (SIGTERM, as `timeout` sends, or Ctrl-C), it reports how far each unfinished one
    got and stops them."""
    waiting, running = list(variants), {}
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while waiting or running:
            while waiting and len(running) < (at_once or len(variants)):
                name, options = waiting.pop(0)
                running[name] = (options, _start(catalogue, preset, name, options, tmp))
            for name, (options, process) in list(running.items()):
                if process.poll() is not None:
                    del running[name]
                    report(summary(name, options, tmp / name, process.returncode, tmp / f"{name}.log"))
            time.sleep(1)
    except KeyboardInterrupt:
        for name, (options, process) in running.items():
            process.terminate()
            progress = [line for line in (tmp / f"{name}.log").read_text().splitlines() if '"epoch done"' in line]
            report({"variant": name, "options": " ".join(options), "exit": None, "last_epochs": progress[-3:]})


def _start(catalogue: Path, preset: str, name: str, options: list[str], tmp: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "finetune", str(catalogue), "--preset", preset, "--force", "--no-progress"]
    with (tmp / f"{name}.log").open("w") as log:
        return subprocess.Popen([*command, "--output", str(tmp / name), *options], stdout=log, stderr=log)


def _interrupt(signum: int, frame: object) -> None:
    """Once: `timeout` signals the process and then its whole group, which would interrupt the cleanup."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def summary(name: str, options: list[str], output: Path, code: int, log: Path) -> dict:
    """A variant's figures from its training.json, or the end of its log when it failed."""
    result: dict = {"variant": name, "options": " ".join(options), "exit": code}
    info_file = output / "training.json"
    if code or not info_file.is_file():
        return {**result, "log_tail": log.read_text()[-2000:]}
    info = json.loads(info_file.read_text())
    overall = info["metrics"]["overall"]
    return {
        **result,
        "heldout_p_at_4": round(overall["P@4"], 3),
        "map_at_r": round(overall["mAP@R"], 3),
        "head_accuracy": round(info["metrics"]["head_accuracy"], 3),
        "epochs": info["epochs_run"],
        "best_epoch": info["best_epoch"],
        **validation_figures(info["history"], info["best_epoch"]),
        "seconds": info["seconds"],
        "phases_s": info["phases_s"],
        "stopped_by": info.get("stopped_by"),  # epochs, budget or patience (None: an older finetune)
        # with --bn-recalibration: the validation photos' P@4 before and after it
        "bn_recalibration": info.get("bn_recalibration"),
        # --output only (not printed): where validation peaked and how it fell after
        "validation_curve": validation_curve(info["history"]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("catalogue", type=Path)
    parser.add_argument("--preset", default="large")
    parser.add_argument("--variant", type=parse_variant, action="append", required=True, dest="variants")
    parser.add_argument("--output", type=Path, help="also write the figures as JSON here (after each variant)")
    parser.add_argument("--one-at-a-time", action="store_true", help="each variant alone, one after another")
    parser.add_argument(
        "--keep", type=Path, help="write each variant's checkpoint and log under this folder and keep them"
    )
    args = parser.parse_args(argv)
    results: list[dict] = []

    def report(result: dict) -> None:
        results.append(result)
        shown = {name: value for name, value in result.items() if name != "validation_curve"}
        print(json.dumps({"figure": f"sweep_{args.preset}", **shown}), flush=True)
        if args.output:
            args.output.write_text(json.dumps(results, indent=2))

    with contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory() as folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        train_side_by_side(
            args.catalogue, args.preset, args.variants, Path(folder), report, 1 if args.one_at_a_time else None
        )


if __name__ == "__main__":
    main()
