"""A small mutation tester: does the suite notice when this module's logic changes?

``python -m testsupport.mutation MODULE.py --tests tests/test_a.py tests/test_b.py``

Each mutant changes one thing in MODULE (a comparison flipped, ``and`` for
``or``, a ``not`` dropped, a number off by one, an identifier-like string such
as a reason code or status changed, a returned value replaced by ``None``) and
the selected tests run against it in a copy of the tree, stopping at the first
failure.  A mutant the tests do not notice *survived*: either a test is missing
an assertion, or the change is equivalent (explained in docs/testing.md).

Why not mutmut: its run re-executes the whole selection per function through
trampolines and copies the tree its own way; here a mutant whose line no
selected test reaches is skipped up front (one coverage run), which is what
makes a run fit on a loaded 2-core machine.  Run it under ``nice`` and bound
it (``--budget``); it is not part of CI.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IDENTIFIER = re.compile(r"^[a-z][a-z0-9_.]*$")   # reason codes, statuses, event kinds; not prose or SQL
FLIP = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE,
        ast.LtE: ast.Gt, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
ARITH = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}


@dataclass
class Mutant:
    index: int
    line: int
    function: str
    what: str
    outcome: str = "pending"    # killed | survived | timeout | uncovered | error
    seconds: float = 0.0
    statement: int = 0          # first line of the statement it is in (what coverage reports)


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _functions(tree: ast.AST) -> dict[int, str]:
    """id(node) -> the qualified name of the function it is in (only code inside functions is mutated)."""
    owner: dict[int, str] = {}

    def visit(node: ast.AST, prefix: str, inside: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            name = inside
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                visit(child, f"{name}.", name)
                continue
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.", inside)
                continue
            if name is not None:
                owner[id(child)] = name
            visit(child, prefix, name)

    visit(tree, "", None)
    return owner


def _statements(tree: ast.AST) -> dict[int, int]:
    """id(node) -> the first line of the innermost statement holding it."""
    first: dict[int, int] = {}

    def visit(node: ast.AST, line: int) -> None:
        for child in ast.iter_child_nodes(node):
            here = child.lineno if isinstance(child, ast.stmt) else line
            first[id(child)] = here
            visit(child, here)

    visit(tree, 0)
    return first


def mutations(source: str) -> list[tuple[Mutant, str]]:
    """Every mutant of ``source`` with its mutated source text."""
    tree = ast.parse(source)
    docstrings = _docstring_nodes(tree)
    owner = _functions(tree)
    statement = _statements(tree)
    out: list[tuple[Mutant, str]] = []
    points: list[tuple[int, str, int, object]] = []   # (node position in walk order, description, line, change)
    nodes = list(ast.walk(tree))
    for position, node in enumerate(nodes):
        if id(node) not in owner:
            continue
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in FLIP:
                    points.append((position, f"{type(op).__name__} -> {FLIP[type(op)].__name__}", line, ("op", i)))
        elif isinstance(node, ast.BoolOp):
            points.append((position, f"{type(node.op).__name__} -> {'Or' if isinstance(node.op, ast.And) else 'And'}",
                           line, ("boolop",)))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            points.append((position, "drop not", line, ("not",)))
        elif isinstance(node, ast.BinOp) and type(node.op) in ARITH:
            points.append((position, f"{type(node.op).__name__} -> {ARITH[type(node.op)].__name__}", line, ("arith",)))
        elif isinstance(node, ast.Constant) and id(node) not in docstrings:
            value = node.value
            if isinstance(value, bool):
                points.append((position, f"{value} -> {not value}", line, ("const", not value)))
            elif isinstance(value, int):
                points.append((position, f"{value} -> {value + 1}", line, ("const", value + 1)))
            elif isinstance(value, str) and IDENTIFIER.match(value):
                points.append((position, f"{value!r} -> 'XX{value}'", line, ("const", f"XX{value}")))
        elif isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            points.append((position, "return None", line, ("return",)))
    for index, (position, what, line, change) in enumerate(points):
        mutated = copy.deepcopy(tree)
        target = list(ast.walk(mutated))[position]
        kind = change[0]
        if kind == "op":
            target.ops[change[1]] = FLIP[type(target.ops[change[1]])]()
        elif kind == "boolop":
            target.op = ast.Or() if isinstance(target.op, ast.And) else ast.And()
        elif kind == "not":
            target.op = ast.UAdd()   # `+x` keeps the node shape; replaced below by the operand
        elif kind == "arith":
            target.op = ARITH[type(target.op)]()
        elif kind == "const":
            target.value = change[1]
        elif kind == "return":
            target.value = ast.Constant(None)
        if kind == "not":
            mutated = _drop_uadd(mutated)
        ast.fix_missing_locations(mutated)
        out.append((Mutant(index, line, owner[id(nodes[position])], what, statement=statement[id(nodes[position])]),
                    ast.unparse(mutated)))
    return out


class _DropUAdd(ast.NodeTransformer):
    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        return node.operand if isinstance(node.op, ast.UAdd) else node


def _drop_uadd(tree: ast.AST) -> ast.AST:
    return _DropUAdd().visit(tree)


def _copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", "node_modules", "*.egg-info", "mutants")
    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)


def _pytest(tree: Path, tests: list[str], timeout: float, basetemp: Path, extra: list[str]) -> tuple[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.monotonic()
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                 f"--basetemp={basetemp}", *extra, *tests],
                                cwd=tree, env=env, timeout=timeout, capture_output=True)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - started
    seconds = time.monotonic() - started
    if result.returncode == 0:
        return "survived", seconds
    if result.returncode == 1:
        return "killed", seconds
    return "error", seconds


def covered_lines(tree: Path, module: str, tests: list[str], basetemp: Path) -> set[int] | None:
    """Lines of ``module`` the selection executes (None: coverage unavailable)."""
    data = tree / ".coverage.mutation"
    env = {**os.environ, "PYTHONPATH": str(tree), "COVERAGE_FILE": str(data)}
    result = subprocess.run([sys.executable, "-m", "coverage", "run", f"--include={tree / module}", "-m", "pytest",
                             "-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}", *tests],
                            cwd=tree, env=env, capture_output=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout.decode()[-3000:] + result.stderr.decode()[-3000:])
        raise SystemExit("the selected tests fail without any mutant")
    report = subprocess.run([sys.executable, "-m", "coverage", "json", "-o", "-", f"--include={tree / module}"],
                            cwd=tree, env=env, capture_output=True)
    if report.returncode != 0:
        return None
    files = json.loads(report.stdout)["files"]
    return set(next(iter(files.values()))["executed_lines"]) if files else set()


def _covered(mutant: Mutant, covered: set[int] | None) -> bool:
    """Coverage reports a multi-line statement on its first line, however far below it the
    mutant sits (a guess of a few lines above missed keyword arguments deep in a call)."""
    if covered is None:
        return True
    return mutant.statement in covered or mutant.line in covered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", help="path relative to the repository root, e.g. odsmedia/gate.py")
    parser.add_argument("--tests", nargs="+", required=True)
    parser.add_argument("--budget", type=float, default=1200.0, help="seconds for the whole run")
    parser.add_argument("--only", default="", help="mutate only functions whose name contains this")
    parser.add_argument("--report", type=Path, help="write the mutants and outcomes here (JSON)")
    parser.add_argument("--rerun-of", type=Path,
                        help="run only the mutants that survived or were not reached in this earlier report "
                             "(after adding tests, or to finish a run the budget cut short)")
    args = parser.parse_args(argv)

    source = (ROOT / args.module).read_text()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mutation-") as work:
        tree = Path(work) / "tree"
        _copy_tree(tree)
        basetemp = Path(work) / "pytest"
        covered = covered_lines(tree, args.module, args.tests, basetemp)
        baseline = time.monotonic() - started
        timeout = 1.5 * baseline + 20      # the baseline ran under coverage, slower than a mutant's run
        mutants = [(m, text) for m, text in mutations(source) if args.only in m.function]
        if args.rerun_of:
            earlier = json.loads(args.rerun_of.read_text())["mutants"]
            again = {(m["line"], m["function"], m["what"]) for m in earlier
                     if m["outcome"] in ("survived", "not run (budget)")}
            mutants = [(m, text) for m, text in mutants if (m.line, m.function, m.what) in again]
        target = tree / args.module
        try:
            for mutant, text in mutants:
                if not _covered(mutant, covered):
                    mutant.outcome = "uncovered"
                    continue
                if time.monotonic() - started > args.budget:
                    mutant.outcome = "not run (budget)"
                    continue
                target.write_text(text)
                mutant.outcome, mutant.seconds = _pytest(tree, args.tests, timeout, basetemp, [])
                print(f"{mutant.outcome:9} {args.module}:{mutant.line} {mutant.function}: {mutant.what}", flush=True)
        finally:
            target.write_text(source)
    counts: dict[str, int] = {}
    for mutant, _ in mutants:
        counts[mutant.outcome] = counts.get(mutant.outcome, 0) + 1
    print(json.dumps(counts))
    if args.report:
        args.report.write_text(json.dumps({"module": args.module, "tests": args.tests, "counts": counts,
                                           "mutants": [asdict(m) for m, _ in mutants]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
