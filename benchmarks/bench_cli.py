#!/usr/bin/env python3
"""Cold start of the ``kernel-sse`` command line against the official SDK.

Run from the repository root (the official SDK comes with the ``bench`` extra,
``pip install '.[bench]'``)::

    python benchmarks/bench_cli.py            # 15 repetitions, about a minute
    python benchmarks/bench_cli.py --quick    # 5 repetitions

It benchmarks the ``kernel_sse.py`` of this checkout (not an installed copy), with
the interpreter that runs it.

What it does, all in one run:

1. ``python -X importtime -c "import kernel_sse"``: what the module imports and how
   long that takes (median of several runs), the slowest imports, and a check that
   nothing outside the standard library is imported; then what the command line
   imports on top of that (``python -X importtime -m kernel_sse follow ...``).
2. Whole processes against one emulator (``kernel_sse_emulator``, 127.0.0.1) serving
   a short invocation: ``running``, five log lines, ``succeeded``, all already
   produced, so each run connects, reads the replay, and exits at the terminal state:

   - ``python -c pass``: the interpreter's own start, the baseline;
   - ``kernel-sse follow ID`` as ``python -m kernel_sse follow ID --base-url URL``,
     the key in ``KERNEL_API_KEY``, with pluggy and entry-point autoload as installed;
   - the same with ``kernel_sse.py`` copied alone into an empty folder and run with
     ``python -I`` (the constrained box: standard library only);
   - the official SDK's equivalent script: ``for e in Kernel(api_key=..., base_url=URL,
     max_retries=0).invocations.follow(id): print(e)``.

   Each process is started with ``posix_spawn`` and reaped with ``os.wait4``, which
   gives that child's own peak RSS (``ru_maxrss``, KiB on Linux); wall time is from
   spawn to reap. The variants take turns within each repetition, so a busy machine
   slows them alike; medians are reported. Every run's output is checked (all five
   lines, exit 0).

Targets (issue "The command line", section "Constrained boxes"), as ratios from
this run: ``kernel-sse follow``'s wall-time overhead (wall time minus the ``python
-c pass`` baseline) at most 1/5 of the SDK script's, and its peak RSS at most 1/2
of the SDK script's.

Not a test: it prints numbers and exits 0 (1 only if a run printed the wrong thing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import kernel_sse  # noqa: E402  (the checkout's copy, first on sys.path)
from kernel_sse_emulator import Log, Script, State, running_emulator  # noqa: E402

INVOCATION_ID = "inv_bench"
API_KEY = "bench-key-0123456789abcdef"
MESSAGES = [f"log line {n} of the short invocation \u2013 caf\u00e9" for n in range(1, 6)]

BASELINE = "python -c pass (baseline)"
CLI = "kernel-sse follow (python -m kernel_sse, pluggy installed)"
BARE_BASELINE = "python -I -S -c pass (baseline, no site-packages)"
LONE_SCRIPT = "python -I -S kernel_sse.py follow (lone file, stdlib only)"
LONE_MODULE = "python -S -m kernel_sse follow (lone file, .pyc cached)"
SDK = "official SDK follow script"

SDK_SCRIPT = """\
import os, sys
from kernel import Kernel
for e in Kernel(api_key=os.environ["KERNEL_API_KEY"], base_url=sys.argv[1], max_retries=0).invocations.follow(sys.argv[2]):
    print(e)
"""


class Sample(NamedTuple):
    wall: float  # seconds
    maxrss: int  # KiB
    code: int
    out: str


# The children are started by a small launcher process, not by this one: Linux
# carries the RSS high-water mark of the process that forks into the child's
# ru_maxrss across exec, and this process (emulator, kernel_sse, the SDK check) is
# far bigger than what is measured. The launcher is ``python -S -I`` with json
# (about 10 MiB, less than any child measured here but the bare interpreter).
LAUNCHER = """
import json, os, sys, time
for line in sys.stdin:
    job = json.loads(line)
    out = os.open(job["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err = os.open(job["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    actions = [(os.POSIX_SPAWN_DUP2, out, 1), (os.POSIX_SPAWN_DUP2, err, 2),
               (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
    os.chdir(job["cwd"])
    started = time.perf_counter()
    pid = os.posix_spawn(job["argv"][0], job["argv"], job["env"], file_actions=actions)
    _pid, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    os.close(out)
    os.close(err)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
    print(json.dumps([wall, usage.ru_maxrss, code]), flush=True)
"""


class Launcher:
    """Runs children one at a time from the small launcher; reports each one's wait4 rusage."""

    def __init__(self, python: str, workdir: str) -> None:
        self.workdir = workdir
        self.proc = subprocess.Popen(
            [python, "-S", "-I", "-c", LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def run(self, argv: Sequence[str], env: Dict[str, str], cwd: str) -> Sample:
        out = os.path.join(self.workdir, "child.out")
        err = os.path.join(self.workdir, "child.err")
        assert self.proc.stdin is not None and self.proc.stdout is not None
        job = {"argv": list(argv), "env": env, "cwd": cwd, "out": out, "err": err}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        wall, maxrss, code = json.loads(self.proc.stdout.readline())
        with open(out, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        if code != 0:
            with open(err, encoding="utf-8", errors="replace") as handle:
                text += handle.read()
        return Sample(wall, maxrss, code, text)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


# ---------------------------------------------------------------- import time


def importtime(argv: Sequence[str], env: Dict[str, str], cwd: str) -> List[Tuple[int, int, int, str]]:
    """(self us, cumulative us, depth, module) per line of -X importtime."""
    with tempfile.TemporaryFile() as err:
        pid = os.posix_spawn(
            argv[0], list(argv), env,
            file_actions=[(os.POSIX_SPAWN_DUP2, err.fileno(), 2),
                          (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)],
        )
        os.waitpid(pid, 0)
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
    rows = []
    for line in text.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match:
            rows.append((int(match.group(1)), int(match.group(2)), len(match.group(3)) // 2, match.group(4)))
    return rows


def subtree(rows: List[Tuple[int, int, int, str]], name: str) -> List[Tuple[int, int, int, str]]:
    """The rows of what importing top-level ``name`` imported (they precede its row)."""
    index = next(i for i, row in enumerate(rows) if row[3] == name and row[2] == 0)
    first = index
    while first > 0 and rows[first - 1][2] > 0:
        first -= 1
    return rows[first:index]


def third_party(python: str, env: Dict[str, str], cwd: str, statement: str) -> Optional[List[str]]:
    """Modules loaded by ``statement`` that are outside the standard library (None: cannot tell)."""
    probe = (
        "import sys; before = set(sys.modules); " + statement + "; "
        "names = getattr(sys, 'stdlib_module_names', None); "
        "print('?' if names is None else ' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before} "
        "- set(names) - {'kernel_sse', 'kernel_sse_plugins', '__main__'})))"
    )
    result = subprocess.run([python, "-c", probe], env=env, cwd=cwd, capture_output=True, text=True)
    text = result.stdout.strip()
    return None if text == "?" or result.returncode != 0 else text.split()


def report_imports(python: str, env: Dict[str, str], cwd: str, url: str, reps: int) -> None:
    print("1. What `import kernel_sse` and `kernel-sse follow` import (python -X importtime)")
    runs = [importtime([python, "-X", "importtime", "-c", "import kernel_sse"], env, cwd) for _ in range(reps)]
    totals = [next(cum for _s, cum, depth, name in rows if name == "kernel_sse" and depth == 0) for rows in runs]
    median_total = statistics.median(totals)
    rows = min(runs, key=lambda r: abs(next(c for _s, c, d, n in r if n == "kernel_sse" and d == 0) - median_total))
    tree = subtree(rows, "kernel_sse")
    own = next(own for own, _c, depth, name in rows if name == "kernel_sse" and depth == 0)
    print(f"   import kernel_sse: {median_total / 1000:.1f} ms (median of {reps}; {own / 1000:.1f} ms its own "
          f"code), {len(tree)} modules not already loaded by the interpreter's start")
    direct = sorted((row for row in tree if row[2] == 1), key=lambda r: -r[1])
    print("   its direct imports, cumulative ms:")
    line = "     "
    for _s, cum, _d, name in direct:
        item = f"{name} {cum / 1000:.1f}, "
        if len(line) + len(item) > 100:
            print(line.rstrip())
            line = "     "
        line += item
    print(line.rstrip(", "))
    outside = third_party(python, env, cwd, "import kernel_sse")
    if outside is not None:
        print(f"   loaded from outside the standard library: {', '.join(outside) or 'nothing'}")
    cli_rows = importtime(
        [python, "-X", "importtime", "-m", "kernel_sse", "follow", INVOCATION_ID, "--base-url", url], env, cwd
    )
    known = {row[3] for row in rows}
    extra = [row for row in cli_rows if row[3] not in known and row[2] == 0 and row[3] != "runpy"]
    extra_ms = sum(cum for _s, cum, _d, _n in extra) / 1000
    print(f"   `kernel-sse follow` imports on top, at run time ({extra_ms:.1f} ms): " + ", ".join(
        f"{name} {cum / 1000:.1f}" for _s, cum, _d, name in sorted(extra, key=lambda r: -r[1])))
    outside = third_party(python, env, cwd, "import runpy, kernel_sse; kernel_sse._load_plugins([])")
    if outside is not None:
        print(f"   ... of which outside the standard library: {', '.join(outside) or 'nothing'} "
              "(pluggy, for the plugins; absent on a constrained box)")
    sdk = [importtime([python, "-X", "importtime", "-c", "import kernel"], env, cwd) for _ in range(max(3, reps // 2))]
    sdk_totals = [next((c for _s, c, d, n in r if n == "kernel" and d == 0), 0) for r in sdk]
    if all(sdk_totals):
        print(f"   for comparison, import kernel (the SDK): {statistics.median(sdk_totals) / 1000:.1f} ms, "
              f"{len(subtree(sdk[0], 'kernel'))} modules")
    print()


# ---------------------------------------------------------------- whole processes


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15, help="repetitions of each variant (default 15)")
    parser.add_argument("--quick", action="store_true", help="5 repetitions")
    args = parser.parse_args(argv)
    reps = 5 if args.quick else args.reps
    python = sys.executable
    print(f"kernel-sse {kernel_sse.__version__}, Python {platform.python_version()} ({python}), "
          f"{platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    has_sdk = True
    try:
        import kernel  # noqa: F401

        sdk_version = getattr(kernel, "__version__", "?")
        print(f"official SDK: kernel {sdk_version}")
    except ImportError:
        has_sdk = False
        print("official SDK: not installed (pip install kernel); its rows are skipped")
    print()

    script = Script(INVOCATION_ID, [State("running"), *[Log(m) for m in MESSAGES], State("succeeded", output={"ok": True})])
    workdir = tempfile.mkdtemp(prefix="bench-cli-")
    box = os.path.join(workdir, "box")
    os.mkdir(box)
    shutil.copy(os.path.join(ROOT, "kernel_sse.py"), box)
    sdk_file = os.path.join(workdir, "sdk_follow.py")
    with open(sdk_file, "w", encoding="utf-8") as handle:
        handle.write(SDK_SCRIPT)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/"),
        "PYTHONPATH": ROOT,
        "KERNEL_API_KEY": API_KEY,
    }
    wrong = 0
    try:
        with running_emulator(script, api_key=API_KEY) as emulator:
            url = emulator.url
            report_imports(python, env, workdir, url, reps=max(5, reps // 2))
            follow = ["follow", INVOCATION_ID, "--base-url", url]
            lone = os.path.join(box, "kernel_sse.py")
            # name: (command, the baseline it is measured against, cwd, lines to expect)
            variants: Dict[str, Tuple[List[str], str, str, Optional[int]]] = {
                BASELINE: ([python, "-c", "pass"], BASELINE, workdir, None),
                CLI: ([python, "-m", "kernel_sse", *follow], BASELINE, workdir, 5),
                BARE_BASELINE: ([python, "-I", "-S", "-c", "pass"], BARE_BASELINE, box, None),
                LONE_SCRIPT: ([python, "-I", "-S", lone, *follow], BARE_BASELINE, box, 5),
                LONE_MODULE: ([python, "-S", "-m", "kernel_sse", *follow], BARE_BASELINE, box, 5),
            }
            if has_sdk:
                variants[SDK] = ([python, sdk_file, url, INVOCATION_ID], BASELINE, workdir, 7)
            samples: Dict[str, List[Sample]] = {name: [] for name in variants}
            launcher = Launcher(python, workdir)
            bare_env = {name: value for name, value in env.items() if name != "PYTHONPATH"}
            for name, (command, _base, cwd, _lines) in variants.items():  # warm caches, write .pyc files
                launcher.run(command, bare_env if cwd == box else env, cwd)
            for rep in range(reps):
                names = list(variants)
                names = names[rep % len(names):] + names[: rep % len(names)]  # take turns
                for name in names:
                    command, _base, cwd, lines = variants[name]
                    sample = launcher.run(command, bare_env if cwd == box else env, cwd)
                    if lines is not None:
                        ok = sample.code == 0 and (
                            all(sample.out.count(m) == 1 for m in MESSAGES) if lines == 5
                            else len(sample.out.splitlines()) == lines
                        )
                        if not ok:
                            wrong += 1
                            print(f"WRONG OUTPUT from {name} (exit {sample.code}):\n{sample.out}")
                    samples[name].append(sample)
            launcher.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"2. Whole process, one short invocation (5 log lines, terminal at once), median of {reps}")
    print(f"   {'':58} {'wall ms':>8} {'overhead':>9} {'peak RSS MiB':>13}  wall min-max")
    walls = {name: statistics.median(s.wall for s in got) for name, got in samples.items()}
    medians: Dict[str, Tuple[float, float]] = {}
    for name, got in samples.items():
        overhead = walls[name] - walls[variants[name][1]]
        rss = statistics.median(s.maxrss for s in got) / 1024
        medians[name] = (overhead, rss)
        ordered = sorted(s.wall for s in got)
        print(f"   {name:58} {walls[name] * 1000:8.1f} {overhead * 1000:9.1f} {rss:13.1f}"
              f"  {ordered[0] * 1000:.0f}-{ordered[-1] * 1000:.0f}")
    print("   (overhead: wall time minus the baseline above it; peak RSS from os.wait4, ru_maxrss)")
    print()
    if has_sdk:
        sdk_overhead, sdk_rss = medians[SDK]
        print("3. Targets: ratios against the official SDK's script, this run")
        for name in (CLI, LONE_SCRIPT, LONE_MODULE):
            overhead, rss = medians[name]
            wall_ratio = overhead / sdk_overhead
            rss_ratio = rss / sdk_rss
            print(f"   {name}:")
            print(f"     wall-time overhead {overhead * 1000:.0f} ms / {sdk_overhead * 1000:.0f} ms = 1/{1 / wall_ratio:.1f}"
                  f"  (target <= 1/5): {'PASS' if wall_ratio <= 0.2 else 'FAIL'}")
            print(f"     peak RSS {rss:.1f} MiB / {sdk_rss:.1f} MiB = 1/{1 / rss_ratio:.1f}"
                  f"  (target <= 1/2): {'PASS' if rss_ratio <= 0.5 else 'FAIL'}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
