"""Mutation-testing report: reads what ``mutmut run`` left in ``mutants/`` and writes the score per module.

``make mutate`` runs mutmut over the core modules (``[tool.mutmut]`` in pyproject.toml: mutmut copies the
package into ``mutants/``, mutates one function at a time behind a trampoline and runs, for each mutant, only
the tests that reached that function), then this script. It reads mutmut's per-file result files
(``mutants/<path>.meta``: an exit code per mutant) and writes

- ``benchmarks/out/mutation.json``: per module the counts (killed, survived, timeout, crashed, no tests, not
  checked, equivalent) and the score, and every surviving mutant with its diff;
- the section of ``TESTING.md`` between ``<!-- mutation:begin -->`` and ``<!-- mutation:end -->``: the
  table and the list of survivors (the rest of TESTING.md is left as it is).

Score = detected / (checked - equivalent), detected = killed + timeout + crashed (a mutant that makes a
test hang or crash is caught). A surviving mutant counts as equivalent only when it is listed in
``benchmarks/mutation_equivalent.json`` (name, the mutated line it must still show, the reason): an entry
whose mutant no longer exists or no longer shows that line (mutmut numbers mutants per function, so an
edit renumbers them) is reported as stale and not counted. Mutants with no test reaching them count as
not detected.

    python benchmarks/mutation_report.py                    # report on every module mutmut has results for
    python benchmarks/mutation_report.py --modules metrics pool index.merge
    python benchmarks/mutation_report.py --list survived    # names only (listed equivalents left out), e.g.:
    .venv/bin/mutmut run $(python benchmarks/mutation_report.py --list survived)

Sampled score (``make mutate-sample``): checking every core mutant is about a day of two cores, so
``--sample N --seed S`` draws N mutants per module uniformly at random (those whose seeded hash of their
name is lowest, so editing one function leaves the rest of the draw as it was), adds the draw to
``benchmarks/mutation_sample.json`` (replacing an earlier draw with the same seed, keeping the others) and
prints the drawn mutants that have no verdict yet (to pass to ``mutmut run``). While that file exists the
report adds, per draw and module, the estimate from the drawn mutants: detected / (checked - equivalent) of
the sample, with a 95% Wilson interval. The estimate is unbiased only because the draw ignores how fast a
mutant's tests are, unlike mutmut's own order, and only for tests written before the draw was run: tests
written to kill a draw's survivors raise that draw's score more than the module's, so a new seed measures
the module again (a draw's table counts how many of its mutants an earlier seed drew too).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "seals_gpu"
CORE = [
    "strategies",
    "pool",
    "driver",
    "learner",
    "metrics",
    "scoring",
    "index.merge",
    "index.shard",
    "store",
    "distributed",
    "atomic",
    "evaluate",
    "selection",
    "split",
]
BEGIN, END = "<!-- mutation:begin -->", "<!-- mutation:end -->"

# mutmut's exit codes (mutmut/stats.py ``status_by_exit_code``), folded into the report's columns.
_STATUS = {
    1: "killed",
    3: "killed",
    37: "killed",  # caught by the type checker (not configured here)
    0: "survived",
    5: "no tests",
    33: "no tests",
    34: "skipped",
    24: "timeout",
    -24: "timeout",
    36: "timeout",
    152: "timeout",
    255: "timeout",
    -9: "crashed",  # SIGKILL: past the CPU limit's grace, or killed for memory
    -11: "crashed",
    2: "interrupted",
    None: "not checked",
}
COLUMNS = ["killed", "timeout", "crashed", "survived", "equivalent", "no tests", "not checked", "other"]


def status_of(code: int | None) -> str:
    s = _STATUS.get(code, "other")
    return s if s in COLUMNS else "other"


def module_of(meta: Path, mutants: Path) -> str:
    rel = meta.relative_to(mutants / PACKAGE).as_posix()
    return rel[: -len(".py.meta")].replace("/", ".")


def load_results(
    mutants: Path, kept: dict[str, dict[str, list[Any]]] | None = None
) -> tuple[dict[str, dict[str, int | None]], dict[str, dict[str, str]], int]:
    """From every ``.meta`` file under mutants/seals_gpu, one read each: module -> {mutant name: exit code
    or None} and module -> {mangled function name: mutmut's hash of its source}; with ``kept`` verdicts,
    the mutants mutmut has no verdict for are filled from them (:func:`apply_verdicts`, whose count is
    the third value)."""
    results: dict[str, dict[str, int | None]] = {}
    hashes: dict[str, dict[str, str]] = {}
    for meta in sorted((mutants / PACKAGE).rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        module = module_of(meta, mutants)
        results[module] = dict(data.get("exit_code_by_key", {}))
        hashes[module] = dict(data.get("hash_by_function_name", {}))
    filled = apply_verdicts(results, hashes, kept or {})
    return results, hashes, filled


def function_key(name: str) -> str:
    """``seals_gpu.pool.xǁPoolǁadd__mutmut_3`` -> ``xǁPoolǁadd`` (the key of mutmut's function hashes)."""
    return name.rpartition(".")[2].partition("__mutmut_")[0]


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def load_verdicts(path: Path | None, mutmut_version: str) -> dict[str, dict[str, list[Any]]]:
    """The kept verdicts (module -> {mutant: [exit code, function hash]}); none without a file, or when the
    file came from another mutmut release (its mutants may be numbered differently).

    Raises ValueError naming the file when it is not a verdict file."""
    if path is None or not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        kept, modules = data["mutmut"], data["modules"]
        if not (isinstance(kept, str) and isinstance(modules, dict)):
            raise TypeError
        for by_name in modules.values():
            for entry in by_name.values():
                if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str)):
                    raise TypeError
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path}: not a verdict file (JSON with mutmut and modules of [exit code, hash]); move it away "
            "or pass another --verdicts"
        ) from exc
    if _minor(kept) != _minor(mutmut_version):
        print(
            f"mutation_report: {path} holds verdicts of mutmut {kept}, this is {mutmut_version}: not used "
            "(its mutants may be numbered differently); they are replaced by this run's",
            file=sys.stderr,
        )
        return {}
    return modules


def apply_verdicts(
    results: dict[str, dict[str, int | None]],
    hashes: dict[str, dict[str, str]],
    kept: dict[str, dict[str, list[Any]]],
) -> int:
    """Fill, in place, the mutants mutmut has no verdict for from the kept ones, where the mutated
    function's source is still what it was when the verdict was taken (same hash: the same mutants under
    the same names). mutmut's own verdicts win. Returns how many were filled."""
    filled = 0
    for module, codes in results.items():
        old = kept.get(module, {})
        now = hashes.get(module, {})
        for name, code in codes.items():
            entry = old.get(name)
            if code is None and entry is not None and now.get(function_key(name)) == entry[1]:
                codes[name] = entry[0]
                filled += 1
    return filled


def verdicts_of(
    results: dict[str, dict[str, int | None]], hashes: dict[str, dict[str, str]]
) -> dict[str, dict[str, list[Any]]]:
    """What to keep: every mutant with a verdict (not "not checked", not interrupted) and its function's
    hash; mutants of functions that changed since their verdict are gone from ``results`` already."""
    out: dict[str, dict[str, list[Any]]] = {}
    for module in sorted(results):
        now = hashes.get(module, {})
        by_name = {
            name: [code, now[function_key(name)]]
            for name, code in sorted(results[module].items())
            if code is not None and status_of(code) != "other" and function_key(name) in now
        }
        if by_name:
            out[module] = by_name
    return out


def mutant_diff(name: str, module: str) -> str:
    """The mutation as a unified diff of its function (mutmut's own diff; empty if it cannot say)."""
    try:
        from mutmut.mutation.diff_apply import get_diff_for_mutant
    except ImportError:
        return ""
    path = Path(PACKAGE, *module.split(".")).with_suffix(".py")
    try:
        return get_diff_for_mutant(name, path=path)
    except Exception:  # noqa: BLE001 - a diff mutmut cannot rebuild must not stop the report
        return ""


def changed_lines(diff: str) -> tuple[list[str], list[str]]:
    body = [ln for ln in diff.splitlines() if not ln.startswith(("---", "+++", "@@"))]
    old = [ln[1:].strip() for ln in body if ln.startswith("-")]
    new = [ln[1:].strip() for ln in body if ln.startswith("+")]
    return old, new


def function_of(name: str) -> str:
    """``seals_gpu.pool.xǁPoolǁadd__mutmut_3`` -> ``Pool.add``; ``seals_gpu.metrics.x_recall__mutmut_1`` -> ``recall``."""
    mangled = name.rpartition(".")[2].partition("__mutmut_")[0]
    if mangled.startswith("x\u01c1"):
        cls, _, meth = mangled[2:].partition("\u01c1")
        return f"{cls}.{meth}"
    return mangled[2:] if mangled.startswith("x_") else mangled


def load_equivalent(path: Path) -> dict[str, dict[str, str]]:
    if not path.exists():
        return {}
    entries = json.loads(path.read_text())
    return {e["mutant"]: e for e in entries}


def build(
    modules: list[str], results: dict[str, dict[str, int | None]], equivalent_path: Path
) -> dict[str, Any]:
    equivalent = load_equivalent(equivalent_path)
    report: dict[str, Any] = {"modules": {}, "survivors": [], "stale_equivalent": [], "status": {}}
    seen_equivalent: set[str] = set()
    for module in modules:
        codes = results.get(module)
        row = dict.fromkeys(COLUMNS, 0)
        if not codes:
            row.update(total=0, score=None, run=False)
            report["modules"][module] = row
            continue
        for name, code in codes.items():
            status = status_of(code)
            if status == "survived":
                diff = mutant_diff(name, module)
                old, new = changed_lines(diff)
                eq = equivalent.get(name)
                change = "" if eq is None else eq.get("change", "").strip()
                # the mutated line; for a mutant that only drops a line, the dropped line
                is_eq = eq is not None and (change in new or (not new and change in old))
                if eq is not None:
                    seen_equivalent.add(name)
                    if not is_eq:
                        report["stale_equivalent"].append(
                            {"mutant": name, "why": "no longer shows that change"}
                        )
                report["survivors"].append(
                    {
                        "mutant": name,
                        "module": module,
                        "function": function_of(name),
                        "old": old,
                        "new": new,
                        "equivalent": is_eq,
                        "reason": eq.get("reason", "") if is_eq else "",
                        "diff": diff,
                    }
                )
                if is_eq:
                    status = "equivalent"
            row[status] += 1
            report["status"][name] = status
        checked = sum(row[c] for c in COLUMNS if c != "not checked")
        detected = row["killed"] + row["timeout"] + row["crashed"]
        denominator = checked - row["equivalent"]
        row.update(
            total=len(codes),
            checked=checked,
            score=round(100.0 * detected / denominator, 1) if denominator else None,
            run=checked > 0,
        )
        report["modules"][module] = row
    for name in sorted(set(equivalent) - seen_equivalent):
        mod = next((m for m in modules if name.startswith(f"{PACKAGE}.{m}.")), None)
        if mod is None or not report["modules"].get(mod, {}).get("run"):
            continue
        codes = results.get(mod, {})
        if name not in codes:
            report["stale_equivalent"].append({"mutant": name, "why": "no such mutant now (code changed)"})
        elif codes[name] is not None:  # unchecked ones say nothing either way
            report["stale_equivalent"].append({"mutant": name, "why": f"{status_of(codes[name])} now"})
    return report


def wilson(detected: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion detected / n (n > 0), as fractions."""
    if n <= 0:
        raise ValueError(f"wilson: n must be positive, got {n}")
    p = detected / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def generate_mutants() -> None:
    """Have mutmut write or update ``mutants/`` (the mutated copy and each module's list of mutants; only the
    files whose source changed are mutated again) without running anything: the first step of ``mutmut
    run``, so a sample is drawn from today's code, also on a machine that never ran mutmut.
    Uses mutmut 3.8's own functions (``pyproject.toml`` pins mutmut < 4)."""
    from mutmut.__main__ import (
        copy_also_copy_files,
        copy_src_dir,
        create_mutants,
        set_mutant_under_test,
        setup_source_paths,
        store_lines_covered_by_tests,
    )

    # mutmut reports its progress on stdout, where --sample prints the names to run: send it to stderr
    # (at the descriptor, for the worker processes too)
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            set_mutant_under_test("mutant_generation")
            Path("mutants").mkdir(exist_ok=True)
            copy_src_dir()
            copy_also_copy_files()
            setup_source_paths()
            store_lines_covered_by_tests()
            create_mutants(os.cpu_count() or 1)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def draw_sample(
    results: dict[str, dict[str, int | None]], modules: list[str], n: int, seed: int
) -> dict[str, list[str]]:
    """Per module, the ``n`` mutants (all when it has fewer) whose seeded hash of their name is lowest.

    A uniform draw (the hash ignores how costly a mutant's tests are) that stays put while the code moves:
    editing one function changes only that function's mutants, not the rest of the draw; a module's draw
    does not depend on the other modules; a larger ``n`` with the same seed draws the same mutants and more.
    """

    def rank(name: str) -> bytes:
        return hashlib.sha256(f"{seed}:{name}".encode()).digest()

    return {module: sorted(sorted(results.get(module, {}), key=rank)[:n]) for module in modules}


def load_draws(path: Path) -> list[dict[str, Any]]:
    """The draws kept in a sample file, by seed (none when it does not exist).

    Raises ValueError naming the file when it is not a sample file. A file from before draws were kept side
    by side (one draw: ``n``, ``seed``, ``modules``) reads as that one draw.
    """
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        draws = data["draws"] if isinstance(data, dict) and "draws" in data else [data]
        for d in draws:
            if not (
                isinstance(d["n"], int) and isinstance(d["seed"], int) and isinstance(d["modules"], dict)
            ):
                raise TypeError
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path}: not a sample file (JSON with draws of n, seed and modules); move it away or pass "
            "another --sample-file"
        ) from exc
    return sorted(draws, key=lambda d: d["seed"])


def sample_rows(report: dict[str, Any], sample: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per module, the counts of the drawn mutants and the estimate with its 95% interval."""
    status = report["status"]
    rows: dict[str, dict[str, Any]] = {}
    for module, names in sample["modules"].items():
        row = dict.fromkeys(COLUMNS, 0)
        for name in names:
            row[status.get(name, "not checked")] += 1
        checked = len(names) - row["not checked"]
        detected = row["killed"] + row["timeout"] + row["crashed"]
        denominator = checked - row["equivalent"]
        row.update(drawn=len(names), checked=checked, detected=detected, estimate=None, low=None, high=None)
        if denominator > 0:
            low, high = wilson(detected, denominator)
            row.update(
                estimate=round(100.0 * detected / denominator, 1),
                low=round(100.0 * low, 1),
                high=round(100.0 * high, 1),
            )
        rows[module] = row
    return rows


def dump_verdicts(keep: dict[str, Any]) -> str:
    """The verdict file's text: JSON with one mutant per line (small diffs when a run adds verdicts)."""
    modules = ",\n".join(
        f"{json.dumps(module)}: {{\n"
        + ",\n".join(f"{json.dumps(n, ensure_ascii=False)}: {json.dumps(e)}" for n, e in by_name.items())
        + "\n}"
        for module, by_name in keep["modules"].items()
    )
    return f'{{\n"mutmut": {json.dumps(keep["mutmut"])},\n"modules": {{\n{modules}\n}}\n}}\n'


def _md_row(*cells: Any) -> str:
    """One row of a markdown table."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _md_code(s: str) -> str:
    s = s.replace("|", "\\|")
    return f"`` {s} ``" if "`" in s else f"`{s}`"


def markdown(report: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        BEGIN,
        f"Generated by `benchmarks/mutation_report.py` on {meta['date']} from mutmut {meta['mutmut']} results "
        f"({meta['machine']}). Score = (killed + timeout + crashed) / (checked - equivalent); a partial module's "
        "score covers only its checked mutants (mutmut runs those with the fastest tests first).",
        "",
        "| module | mutants | killed | timeout | crashed | survived | equivalent | no tests | not checked | score |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for module, row in report["modules"].items():
        path = f"{module.replace('.', '/')}.py"
        if not row["run"]:
            lines.append(f"| {path} | {row['total'] or '-'} | | | | | | | | not run |")
            continue
        score = "-" if row["score"] is None else f"{row['score']:.1f}%"
        if row["not checked"]:
            score += f" (partial: {row['checked']} of {row['total']} checked)"
        cells = [row[c] for c in ("total", "killed", "timeout", "crashed", "survived", "equivalent")]
        lines.append(_md_row(path, *cells, row["no tests"], row["not checked"], score))
    for sample in report.get("samples", []):
        earlier = (
            f"; {sample['also_earlier']} of them drawn by an earlier seed too"
            if sample["also_earlier"]
            else ""
        )
        lines += [
            "",
            f"Sampled estimate (`make mutate-sample`: {sample['n']} mutants drawn per module with seed "
            f"{sample['seed']}, uniformly, whatever their tests cost{earlier}; 95% Wilson interval):",
            "",
            "| module | drawn | checked | detected | survived | equivalent | no tests | estimate | 95% interval |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for module, row in sample["rows"].items():
            path = f"{module.replace('.', '/')}.py"
            est = "-" if row["estimate"] is None else f"{row['estimate']:.1f}%"
            ci = "-" if row["low"] is None else f"{row['low']:.1f}-{row['high']:.1f}%"
            if row["not checked"]:
                est += f" ({row['not checked']} not checked)"
            cells = [row[c] for c in ("drawn", "checked", "detected", "survived", "equivalent", "no tests")]
            lines.append(_md_row(path, *cells, est, ci))
    survivors = [s for s in report["survivors"] if not s["equivalent"]]
    equivalents = [s for s in report["survivors"] if s["equivalent"]]
    lines += ["", f"Surviving mutants ({len(survivors)}):", ""]
    for s in survivors:
        change = "; ".join(_md_code(x) for x in s["old"]) + " -> " + "; ".join(_md_code(x) for x in s["new"])
        lines.append(f"- `{s['mutant'].rpartition('.')[2]}` ({s['module']}, `{s['function']}`): {change}")
    if not survivors:
        lines.append("- none")
    lines += ["", f"Equivalent mutants ({len(equivalents)}, from `benchmarks/mutation_equivalent.json`):", ""]
    for s in equivalents:
        change = "; ".join(_md_code(x) for x in s["old"]) + " -> " + "; ".join(_md_code(x) for x in s["new"])
        lines.append(
            f"- `{s['mutant'].rpartition('.')[2]}` ({s['module']}, `{s['function']}`): {change}. {s['reason']}"
        )
    if not equivalents:
        lines.append("- none")
    if report["stale_equivalent"]:
        lines += ["", "Stale entries in `benchmarks/mutation_equivalent.json` (not counted):", ""]
        lines += [f"- `{e['mutant']}`: {e['why']}" for e in report["stale_equivalent"]]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace the marked section of ``path`` (append it, under a heading, when there is none yet)."""
    text = path.read_text() if path.exists() else "# Testing\n"
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n## Mutation score\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/mutation_report.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--modules",
        nargs="+",
        default=None,
        help="modules as dotted names under seals_gpu (default: the core list)",
    )
    p.add_argument("--mutants", type=Path, default=ROOT / "mutants")
    p.add_argument("--equivalent", type=Path, default=ROOT / "benchmarks" / "mutation_equivalent.json")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "mutation.json")
    p.add_argument(
        "--testing",
        type=Path,
        default=ROOT / "TESTING.md",
        help="markdown file whose mutation section to rewrite",
    )
    p.add_argument(
        "--list",
        choices=["survived", "not-checked", "no-tests"],
        help="only print mutant names, one per line (survived: those not listed equivalent)",
    )
    p.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="draw N mutants per module, write them to --sample-file and print those with no verdict yet",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --sample's draw (default 0)")
    p.add_argument("--sample-file", type=Path, default=ROOT / "benchmarks" / "mutation_sample.json")
    p.add_argument(
        "--verdicts",
        type=Path,
        default=None,
        help="kept verdicts, read and rewritten (default: benchmarks/mutation_verdicts.json with the default "
        "--mutants, none with another)",
    )
    a = p.parse_args(argv)
    # paths as the caller meant them: the report later works from the project root (os.chdir below)
    for name in ("mutants", "equivalent", "out", "testing", "sample_file"):
        setattr(a, name, getattr(a, name).absolute())
    default_mutants = a.mutants.resolve() == (ROOT / "mutants")
    if a.verdicts is None and default_mutants:
        a.verdicts = ROOT / "benchmarks" / "mutation_verdicts.json"
    a.verdicts = a.verdicts.absolute() if a.verdicts is not None else None
    modules = a.modules or CORE
    if a.sample is not None and a.sample < 1:
        print(
            f"mutation_report: error: --sample {a.sample}: give a positive count, e.g. --sample 40",
            file=sys.stderr,
        )
        return 2
    unknown = [m for m in modules if m not in CORE]
    if unknown:
        print(
            f"mutation_report: error: --modules {' '.join(unknown)}: not a core module; pick from {' '.join(CORE)}",
            file=sys.stderr,
        )
        return 2
    has_verdicts = a.verdicts is not None and a.verdicts.exists()
    if not a.mutants.is_dir() and a.sample is None and not (default_mutants and has_verdicts):
        print(f"mutation_report: error: {a.mutants} does not exist; run `make mutate` first", file=sys.stderr)
        return 2
    try:
        from importlib.metadata import version

        mutmut_version = version("mutmut")
    except Exception:  # noqa: BLE001
        mutmut_version = "?"
    try:
        draws = load_draws(a.sample_file) if a.list is None else []
        kept = load_verdicts(a.verdicts, mutmut_version)
    except ValueError as exc:
        print(f"mutation_report: error: {exc}", file=sys.stderr)
        return 2
    os.chdir(ROOT)  # mutmut's diff helpers read mutants/ and the sources relative to the project root
    if default_mutants and (a.sample is not None or not a.mutants.is_dir()):
        # a draw from a stale copy would name mutants of code that changed since; on a fresh clone the
        # kept verdicts need today's mutants and function hashes to be matched against
        generate_mutants()
    if a.sample is not None:
        results = load_results(a.mutants, kept)[0]
        missing = [m for m in modules if not results.get(m)]
        if missing:
            print(
                f"mutation_report: error: no mutants of {' '.join(missing)} in {a.mutants}; "
                "run `make mutate` first (mutmut writes them on its first run)",
                file=sys.stderr,
            )
            return 2
        drawn = draw_sample(results, modules, a.sample, a.seed)
        others = [d for d in draws if d["seed"] != a.seed]
        draws = sorted([*others, {"n": a.sample, "seed": a.seed, "modules": drawn}], key=lambda d: d["seed"])
        a.sample_file.parent.mkdir(parents=True, exist_ok=True)
        a.sample_file.write_text(json.dumps({"draws": draws}, indent=1) + "\n")
        for module, names in drawn.items():
            for name in names:
                if results[module].get(name) is None:
                    print(name)
        return 0
    if a.list:
        results = load_results(a.mutants, kept)[0]
        want = {"survived": "survived", "not-checked": "not checked", "no-tests": "no tests"}[a.list]
        # the report's own status: a survivor listed equivalent (and still showing that change) is not listed
        for name, status in build(modules, results, a.equivalent)["status"].items():
            if status == want:
                print(name)
        return 0
    results, hashes, filled = load_results(a.mutants, kept)
    report = build(modules, results, a.equivalent)
    report["samples"] = []
    seen: set[str] = set()
    for draw in draws:
        draw["modules"] = {m: v for m, v in draw["modules"].items() if m in modules}
        names = {n for v in draw["modules"].values() for n in v}
        report["samples"].append(
            {
                "n": draw["n"],
                "seed": draw["seed"],
                "also_earlier": len(names & seen),
                "rows": sample_rows(report, draw),
            }
        )
        seen |= names
    report.pop("status")
    meta = {
        "date": _dt.date.today().isoformat(),
        "mutmut": mutmut_version,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({**meta, **report}, indent=2) + "\n")
    write_section(a.testing, markdown(report, meta))
    if a.verdicts is not None:
        a.verdicts.parent.mkdir(parents=True, exist_ok=True)
        keep = {"mutmut": mutmut_version, "modules": verdicts_of(results, hashes)}
        a.verdicts.write_text(dump_verdicts(keep))
        print(f"verdicts: {filled} taken from {a.verdicts.name} (function unchanged since), all kept there")
    width = max(len(m) for m in report["modules"])
    print(f"{'module':<{width}}  mutants  killed  survived  equiv  no-tests  score")
    for module, row in report["modules"].items():
        score = "not run" if not row["run"] else ("-" if row["score"] is None else f"{row['score']:.1f}%")
        if row["run"] and row["not checked"]:
            score += f" (partial: {row['checked']} of {row['total']} checked)"
        print(
            f"{module:<{width}}  {row['total']:>7}  {row['killed'] + row['timeout'] + row['crashed']:>6}  "
            f"{row['survived']:>8}  {row['equivalent']:>5}  {row['no tests']:>8}  {score}"
        )
    print(f"wrote {a.out} and the mutation section of {a.testing}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
