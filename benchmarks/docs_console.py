"""The ``console`` blocks of docs/*.md: find every ``$ command``, run it in a sandbox, and (with ``--write``) put
its real output back into the page, so what the docs show is what the tool prints.

    python -m benchmarks.docs_console --write docs/tutorial.md     # refresh the outputs of one page
    python -m benchmarks.docs_console                              # run every command, report exit codes

The sandbox is a fresh folder with ``examples/`` linked to the repository's and an empty ``docs/img/``, so commands
run exactly as written from the repository root while the files they write stay out of the repository (the
committed pictures are written by running a page's commands from the root itself: ``--in-place``). Commands run
in page order within a page, so a later command may read what an earlier one wrote. tests/test_docs.py runs the
same commands with this module and checks their exit codes.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: First word(s) of the answer a page shows -> the exit code of the command.
ANSWER_CODES = (("not robust", 10), ("not_robust", 10), ("sat", 10), ("unknown", 20), ("timeout", 20))
FENCE = re.compile(r"^```console[^\n]*\n(.*?)^```", re.S | re.M)


@dataclass
class Command:
    """One ``$ ...`` line of a console block (continuation lines joined) and the output shown under it."""

    page: str
    text: str
    output: list[str] = field(default_factory=list)
    span: tuple[int, int] = (0, 0)  # character span of the output in the page

    @property
    def expects_error(self) -> bool:
        """The page shows this command failing (its output starts with ``error:``): exit code 2."""
        return bool(self.output) and self.output[0].startswith("error:")

    @property
    def expected_code(self) -> int:
        """The exit code the output the page shows implies: 2 for an ``error:`` line, 10 for a counterexample (not
        robust / sat), 20 for unknown / timeout, else 0 (docs/cli.md, "Exit codes")."""
        if self.expects_error:
            return 2
        first = self.output[0].strip() if self.output else ""
        for answer, code in ANSWER_CODES:
            if first == answer or first.startswith(answer + " "):
                return code
        return 0

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text)


def commands(page: Path) -> list[Command]:
    """Every command of every console block of ``page``, in order."""
    text = page.read_text()
    out: list[Command] = []
    for block in FENCE.finditer(text):
        body_start = block.start(1)
        lines = block.group(1).splitlines(keepends=True)
        pos = body_start
        i = 0
        while i < len(lines):
            line = lines[i]
            if not line.startswith("$ "):
                pos += len(line)
                i += 1
                continue
            cmd = line[2:].rstrip("\n")
            pos += len(line)
            i += 1
            while cmd.endswith("\\") and i < len(lines):
                cmd = cmd[:-1].rstrip() + " " + lines[i].strip()
                pos += len(lines[i])
                i += 1
            start = pos
            output = []
            while i < len(lines) and not lines[i].startswith("$ "):
                output.append(lines[i].rstrip("\n"))
                pos += len(lines[i])
                i += 1
            out.append(Command(page.name, cmd.strip(), output, (start, pos)))
    return out


def sandbox(where: Path) -> Path:
    """A folder where the docs' commands run as from the repository root, writing nothing into it.

    ``MLROBUST_DOCS_EXAMPLES`` may point ``examples/`` at another folder of the same layout (to try new models).
    """
    where.mkdir(parents=True, exist_ok=True)
    targets = {"examples": Path(os.environ.get("MLROBUST_DOCS_EXAMPLES", ROOT / "examples")),
               "benchmarks": ROOT / "benchmarks"}
    for name, target in targets.items():
        link = where / name
        if not link.exists():
            link.symlink_to(target)
    (where / "docs" / "img").mkdir(parents=True, exist_ok=True)
    (where / "out").mkdir(exist_ok=True)
    return where


def run(cmd: Command, cwd: Path, timeout: float = 900) -> tuple[int, str, float]:
    """Run one command (``mlrobust ...`` or ``python ...``) in ``cwd``: exit code, combined output, seconds."""
    argv = cmd.argv
    if argv[0] == "mlrobust":
        argv = [sys.executable, "-c", "from mlrobust.cli import main; main()", *argv[1:]]
    elif argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    env = dict(os.environ, COLUMNS="100", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
               TERM="dumb", NO_COLOR="1")
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, _clean(proc.stdout + proc.stderr), time.perf_counter() - start


def _clean(text: str) -> str:
    """Terminal output as the page shows it: no trailing spaces, no HiGHS start-up banner (printed by highspy on
    stdout from C++ when a solver object is made, whatever the options)."""
    lines = [line.rstrip() for line in text.splitlines()]
    lines = [line for line in lines if not line.startswith(("Running HiGHS ", "Includes third-party software"))]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def write_outputs(page: Path, results: list[tuple[Command, str]]) -> None:
    """Replace each command's shown output by the real one."""
    text = page.read_text()
    for cmd, output in sorted(results, key=lambda r: -r[0].span[0]):
        new = (output + "\n") if output else ""
        text = text[: cmd.span[0]] + new + text[cmd.span[1]:]
    page.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.docs_console", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pages", nargs="*", type=Path, help="pages (default: every docs/*.md)")
    parser.add_argument("--write", action="store_true", help="put the real outputs into the pages")
    parser.add_argument("--in-place", action="store_true", help="run in the repository root (writes docs/img)")
    parser.add_argument("--sandbox", type=Path, default=ROOT / "build" / "docs-sandbox")
    args = parser.parse_args(argv)
    pages = args.pages or sorted(DOCS.glob("*.md"))
    cwd = ROOT if args.in_place else sandbox(args.sandbox)
    (cwd / "out").mkdir(exist_ok=True)  # where the pages' commands write (ignored by git in the repository)
    failed = 0
    for page in pages:
        results = []
        for cmd in commands(page):
            code, output, secs = run(cmd, cwd)
            ok = code == cmd.expected_code
            failed += not ok
            print(f"{'ok ' if ok else 'FAIL'} {page.name}: $ {cmd.text}  (exit {code}, {secs:.1f} s)", flush=True)
            if not ok:
                print(output[-2000:])
            results.append((cmd, output))
        if args.write:
            write_outputs(page, results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
