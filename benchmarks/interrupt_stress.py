"""Ctrl-C and kill stress: interrupt ``jaxal run`` at random moments, resume, compare.

Runs a small experiment once uninterrupted (the reference), then again and again
under fire until the signals are spent (a fresh directory per trial): start it
(``--resume`` once its directory exists), wait a random time, send SIGINT or SIGKILL
(chosen at random), and repeat until the run completes. One signal in four lands
during start-up (a random moment in the half second after jaxlib starts loading, while
JAX and the data load; the interpreter's own start-up before any jaxal code runs is
left out: no Python program can handle a signal there); the others after the run has started (its ``config.json`` is written) plus a
random time. Checks every exit:

- after SIGINT the process exits 130 and prints one "interrupted" line, exactly once
  (or 0, if the run had already finished and never saw the signal);
- after SIGKILL it dies of the signal (or had finished);
- anything else (a crash such as a segmentation fault, another exit code, or an
  interrupt that was received and then ignored) is a failure;

and at the end of every trial that the records equal the reference's (chosen indices
and test accuracies). Writes a JSON summary with ``--json``.

    python benchmarks/interrupt_stress.py [--quick] [--interrupts N] [--seed S] [--json PATH]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

RUN = ["run", "--strategy", "entropy", "--widths", "16", "--initial", "10", "--budget", "5", "--rounds", "8",
       "--epochs", "40", "--candidates", "80", "--quiet"]
# --quick: the same run with 4 rounds (labeled sizes 10..30: two shape buckets, not three)
RUN_QUICK = ["run", "--strategy", "entropy", "--widths", "16", "--initial", "10", "--budget", "5", "--rounds", "4",
             "--epochs", "40", "--candidates", "80", "--quiet"]


def command(cache: str, out: str, resume: bool, run: list[str] = RUN) -> list[str]:
    return [sys.executable, "-m", "jaxal", *run, "--compile-cache", cache, "--out", out] + (
        ["--resume"] if resume else [])


def wait_for_start(proc: subprocess.Popen, out: str, since: float) -> None:
    """Until the run has (re)written its config after ``since`` (or ended): every start,
    resumed ones too, writes it once imports are done and jaxal's handler is in place."""
    config = os.path.join(out, "entropy", "seed0", "config.json")
    while proc.poll() is None and not (os.path.exists(config) and os.path.getmtime(config) >= since):
        time.sleep(0.01)


def wait_for_jax_loading(proc: subprocess.Popen) -> None:
    """Until the process maps jaxlib (Linux ``/proc``; elsewhere a fixed 0.3 s)."""
    if not os.path.exists("/proc/self/maps"):
        time.sleep(0.3)
        return
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/maps") as f:
                if "jaxlib" in f.read():
                    return
        except OSError:
            pass
        time.sleep(0.005)


def records(out: str) -> list[dict]:
    with open(os.path.join(out, "entropy", "seed0", "records.jsonl")) as f:
        return [json.loads(line) for line in f]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized: 3 interrupts, a 4-round run")
    ap.add_argument("--interrupts", type=int, default=None, help="signals to send (default 60)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args(argv)
    target = args.interrupts or (3 if args.quick else 60)
    run = RUN_QUICK if args.quick else RUN
    rng = np.random.default_rng(args.seed)
    work = tempfile.mkdtemp(prefix="jaxal-stress-")
    cache = os.path.join(work, "xla")
    t0 = time.perf_counter()
    ref = subprocess.run(command(cache, os.path.join(work, "reference"), False, run), capture_output=True, text=True)
    if ref.returncode != 0:
        raise SystemExit(f"reference run failed:\n{ref.stderr[-2000:]}")
    # a second, warm run (the cache is full now): how long a start works once it has begun
    warm = os.path.join(work, "warm")
    since = time.time()
    proc = subprocess.Popen(command(cache, warm, False, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_start(proc, warm, since)
    t1 = time.perf_counter()
    proc.wait()
    ref_seconds = time.perf_counter() - t1
    outcomes: collections.Counter = collections.Counter()
    phases: collections.Counter = collections.Counter()  # when the signals were sent
    failures: list[str] = []
    sent, starts, trials, equal = 0, 0, 0, 0
    reference = [(r["chosen"], r["test_accuracy"]) for r in records(os.path.join(work, "reference"))]
    while sent < target and not failures:  # one trial: a fresh run, interrupted until it completes
        trials += 1
        out = os.path.join(work, f"stressed{trials}")
        finished = False
        while not finished:
            since = time.time()
            # --resume once the run directory exists (a start-up interrupt may leave none)
            proc = subprocess.Popen(command(cache, out, os.path.isdir(out), run), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            starts += 1
            if sent < target:
                phase = "start-up" if rng.random() < 0.25 else "run"
                if phase == "start-up":  # after the interpreter's own start-up, see above
                    wait_for_jax_loading(proc)
                    time.sleep(float(rng.uniform(0.0, 0.5)))
                else:  # from the moment the run has started (its config is written), a random delay
                    wait_for_start(proc, out, since)
                    time.sleep(float(rng.uniform(0.0, 0.8 * ref_seconds)))
                kind = "SIGINT" if rng.random() < 0.5 else "SIGKILL"
                proc.send_signal(signal.SIGINT if kind == "SIGINT" else signal.SIGKILL)
                phases[f"{kind} at {phase}"] += 1
                sent += 1
            else:
                kind = None
            _, err = proc.communicate()
            code = proc.returncode
            if code == 0:
                finished = True
                if kind == "SIGINT" and "interrupt received" in err:
                    failures.append(f"start {starts}: SIGINT received and ignored (exit 0)")
                outcomes[f"{kind or 'none'}: finished"] += 1
            elif kind == "SIGINT" and code == 130 and err.count("interrupted") == 1 and "Traceback" not in err:
                outcomes["SIGINT: exit 130"] += 1
            elif kind == "SIGKILL" and code == -signal.SIGKILL:
                outcomes["SIGKILL: killed"] += 1
            else:
                outcomes[f"{kind}: exit {code}"] += 1
                failures.append(f"start {starts}: {kind} -> exit {code}: {err[-500:]}")
                if code not in (130, -signal.SIGKILL):
                    break
        if finished:
            if [(r["chosen"], r["test_accuracy"]) for r in records(out)] == reference:
                equal += 1
            else:
                failures.append(f"trial {trials}: records differ from the uninterrupted run")
    same = equal == trials and not failures
    summary = {"signals_sent": sent, "starts": starts, "trials": trials, "trials_equal_reference": equal,
               "outcomes": dict(outcomes), "sent_at": dict(phases), "failures": failures,
               "records_equal_reference": bool(same), "reference_seconds": round(ref_seconds, 2),
               "seconds": round(time.perf_counter() - t0, 1), "load_average": os.getloadavg(), "run": run}
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    if failures:
        raise SystemExit(1)
    return summary


if __name__ == "__main__":
    main()
