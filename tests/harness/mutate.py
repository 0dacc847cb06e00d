"""`make mutate`: mutation testing (mutmut) of the security-critical modules, within a time budget.

The modules and the tests that may kill their mutants are in pyproject.toml (`[tool.mutmut]`);
mutmut runs each mutant against only the tests that reach the mutated function. PostgreSQL, Redis
and OpenBao are started once here and the migrated template database is made once, so each mutant
costs its tests only. When the budget (`--budget-minutes`, `MUTATE_BUDGET_MINUTES`) runs out the run
stops; results are kept in `mutants/`, and the next run carries on where it stopped (`--fresh`
starts over). Prints the score of each module and every surviving mutant with its diff.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from hub import migrate
from tests.harness import services
from tests.harness.databases import DatabaseFactory

ROOT = Path(__file__).resolve().parents[2]
MUTMUT = str(Path(sys.executable).with_name("mutmut"))
RESULT = re.compile(r"^\s+(\S+): (.+)$")
MODULE = re.compile(r"^(.*?)\.x[_ǁ]")
FINAL = ("killed", "timeout")


def _mutmut_env(base: Path, jobs: int) -> tuple[dict[str, str], list]:
    """Services for every test session of the run, and the environment that points tests at them.

    One Redis server per concurrent mutant (tests flush their Redis databases); each session takes
    a free one (tests/harness/mutmut_plugin.py). PostgreSQL and OpenBao are shared: database names
    carry the pid, secret paths are per object.
    """
    stack = [services.postgres(base), services.openbao(base)]
    stack += [services.redis(base / f"redis-{i}") for i in range(jobs)]
    pg, bao, *redis = (context.__enter__() for context in stack)
    factory = DatabaseFactory(pg)
    name = factory.new_name("mutate_template")
    asyncio.run(migrate.upgrade(asyncio.run(factory.create(name))))
    (base / "locks").mkdir()
    env = os.environ | {
        "DATABASE_URL": pg.url("postgres"),
        "REDIS_URL": redis[0].url(0),
        "PN_MUTATE_REDIS_URLS": " ".join(server.url(0) for server in redis),
        "PN_MUTATE_LOCKS": str(base / "locks"),
        "VAULT_ADDR": bao.addr,
        "VAULT_TOKEN": bao.token,
        "PN_TEST_TEMPLATE_DATABASE": name,
    }
    return env, stack


def _run_mutmut(env: dict[str, str], budget_seconds: float, jobs: int, names: list[str]) -> None:
    process = subprocess.Popen(
        [MUTMUT, "run", "--max-children", str(jobs), *names],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        # a shell starts background jobs with SIGINT ignored, and mutmut would inherit that: then
        # the SIGINT that ends the budget would not stop it (Python raises KeyboardInterrupt only
        # where SIGINT is not ignored)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler),
    )
    try:
        process.wait(budget_seconds)
        return
    except subprocess.TimeoutExpired:
        print(f"\nmake mutate: the {budget_seconds / 60:.0f}-minute budget is spent; stopping", flush=True)
    process.send_signal(signal.SIGINT)  # mutmut stops its workers and keeps every result so far
    try:
        process.wait(120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _results(env: dict[str, str]) -> dict[str, str]:
    done = subprocess.run(
        [MUTMUT, "results", "--all", "true"], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return {m.group(1): m.group(2) for line in done.stdout.splitlines() if (m := RESULT.match(line))}


def _diff(name: str, env: dict[str, str]) -> str:
    done = subprocess.run([MUTMUT, "show", name], cwd=ROOT, env=env, capture_output=True, text=True)
    lines = done.stdout.splitlines()
    return "\n".join(
        line for line in lines if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))
    )


def report(env: dict[str, str]) -> float:
    results = _results(env)
    by_module: dict[str, Counter[str]] = {}
    for name, status in results.items():
        match = MODULE.match(name)
        by_module.setdefault(match.group(1) if match else "?", Counter())[status] += 1
    columns = ("killed", "timeout", "survived", "no tests", "unchecked", "score")
    print(f"\n{'module':<42} " + " ".join(f"{c:>9}" for c in columns))
    totals: Counter[str] = Counter()
    for module, counts in sorted(by_module.items()):
        totals += counts
        print(_row(module, counts))
    print(_row("all", totals))
    survivors = sorted(name for name, status in results.items() if status in ("survived", "no tests"))
    print(f"\n{len(survivors)} surviving mutants:")
    for name in survivors:
        print(f"\n{name} ({results[name]})\n{_diff(name, env)}")
    return _score(totals)


def _score(counts: Counter[str]) -> float:
    killed = counts["killed"] + counts["timeout"]
    tested = killed + counts["survived"] + counts["no tests"]
    return 100.0 * killed / tested if tested else 0.0


def _row(module: str, counts: Counter[str]) -> str:
    unchecked = sum(n for s, n in counts.items() if s not in ("killed", "timeout", "survived", "no tests"))
    cells = [counts["killed"], counts["timeout"], counts["survived"], counts["no tests"], unchecked]
    return f"{module:<42} " + " ".join(f"{c:>9}" for c in cells) + f" {_score(counts):>8.1f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make mutate", description=__doc__)
    parser.add_argument(
        "--budget-minutes", type=float, default=float(os.environ.get("MUTATE_BUDGET_MINUTES", 45))
    )
    parser.add_argument(
        "--jobs", type=int, default=int(os.environ.get("MUTATE_JOBS", 1)), help="mutants run at once"
    )
    parser.add_argument("--fresh", action="store_true", help="forget earlier results (mutants/)")
    parser.add_argument(
        "--forget",
        action="append",
        default=[],
        metavar="FILE",
        help="forget the results for one mutated file (e.g. hub/secrets/ca.py); repeatable",
    )
    parser.add_argument(
        "--recheck",
        action="store_true",
        help="run every mutant not killed yet, survivors included (a plain run keeps their verdict)",
    )
    parser.add_argument(
        "--survivors", action="store_true", help="with --recheck, only the survived and no-tests mutants"
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="with --recheck, leave out these mutants (e.g. 'hub.federation.accept.*'); repeatable",
    )
    parser.add_argument("--report-only", action="store_true", help="print the results of earlier runs")
    args = parser.parse_args(argv)
    if args.fresh:
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    for path in args.forget:
        for stale in (ROOT / "mutants" / path, ROOT / "mutants" / f"{path}.meta"):
            stale.unlink(missing_ok=True)
    base = Path(tempfile.mkdtemp(prefix="pn-mutate-", dir="/tmp"))
    env, stack = _mutmut_env(base, args.jobs) if not args.report_only else (dict(os.environ), [])
    try:
        if not args.report_only:
            again = [
                name
                for name, status in (_results(env).items() if args.recheck else ())
                if status not in FINAL
                and not (args.survivors and status == "not checked")
                and not any(fnmatch.fnmatch(name, x) for x in args.exclude)
            ]
            # a forgotten file's mutants are made again by this run, under names not known yet
            again += [
                path.removesuffix(".py").replace("/", ".") + ".*" for path in args.forget if args.recheck
            ]
            if args.recheck and not again:
                print("make mutate: every mutant is killed")
            else:
                _run_mutmut(env, args.budget_minutes * 60, args.jobs, again)
        score = report(env)
    finally:
        for context in reversed(stack):
            context.__exit__(None, None, None)
        shutil.rmtree(base, ignore_errors=True)
    print(f"\nmutation score: {score:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
