"""Cold start of ``enginehost plugins list --json``, against ``python -c "import pluggy"``.

Both commands run alternately in fresh interpreters, in the same run, so machine noise
hits both alike; the figure that matters is the ratio of medians. Targets (issue 2):
the CLI within 300 ms, or within 2x of the pluggy baseline.

    python bench/cold_start.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def _time(command: list[str], env: dict[str, str], cwd: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        command,
        env=env,
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs of each command")
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINEHOST_")}
    commands = {
        "baseline: python -c 'import pluggy'": [sys.executable, "-c", "import pluggy"],
        "python -m enginehost plugins list --json": [
            sys.executable,
            "-m",
            "enginehost",
            "plugins",
            "list",
            "--json",
        ],
    }
    with tempfile.TemporaryDirectory() as cwd:
        env["ENGINEHOST_DATA_DIR"] = os.path.join(cwd, "data")
        for command in commands.values():  # warm the OS file cache and .pyc files
            _time(command, env, cwd)
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, command in commands.items():
                samples[name].append(_time(command, env, cwd))

    medians = {name: statistics.median(values) for name, values in samples.items()}
    baseline, cli = medians.values()
    print(f"runs per command: {args.runs}")
    for name, values in samples.items():
        print(
            f"{name:45s} median {medians[name] * 1000:7.1f} ms   "
            f"min {min(values) * 1000:7.1f} ms   max {max(values) * 1000:7.1f} ms"
        )
    print(f"ratio cli/baseline: {cli / baseline:.2f}x")
    verdict = "met" if cli <= 0.300 or cli <= 2 * baseline else "NOT met"
    print(f"target (<= 300 ms or <= 2x baseline): {verdict}")


if __name__ == "__main__":
    main()
