"""The documentation cannot rot: every ``$ command`` of every console block in docs/*.md and every ``python`` block
runs (in page order, in a sandbox that looks like the repository root) with the exit code the answer the page shows
implies (``Command.expected_code``), and
docs/cli.md names every command and option the CLI has.

Commands not run here, each with the test that covers it instead, are listed in ``COVERED_ELSEWHERE``; commands
that take long are marked slow by ``SLOW``. The MNIST download needs the internet: docs/cli.md shows it outside a
console block, and its error path is run here with the network switched off.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.docs_console import DOCS, Command, commands, run, sandbox

ROOT = Path(__file__).resolve().parent.parent

#: Substrings of commands run by another test (the reason is the value).
COVERED_ELSEWHERE = {
    "python -m benchmarks run --suite smoke": "tests/test_benchmarks_smoke.py runs the smoke suite",
    "python -m benchmarks run --suite full": "takes hours; its results are committed in benchmarks/results/",
}
#: Substrings of commands that take more than a few seconds: run with ``-m slow``.
SLOW = ("--method layer-search", "--cutting sensitivity", "--time-limit 60", "--time-limit 120",
        "examples/custom_verifier.py", "--workers 2", "out/ex00.json", "out/pgd.jsonl", "maximize(", "run_batch(")


def all_commands() -> list[Command]:
    return [c for page in sorted(DOCS.glob("*.md")) for c in commands(page)]


def _params() -> list:
    out = []
    for cmd in all_commands():
        marks = [pytest.mark.slow] if any(s in cmd.text for s in SLOW) else []
        out.append(pytest.param(cmd, marks=marks, id=f"{cmd.page}:{cmd.text[:70]}"))
    return out


@pytest.fixture(scope="module")
def where(tmp_path_factory) -> Path:
    """The sandbox, with fake MNIST files for the data-building commands (real ones are 55 MB and not here)."""
    from test_data import write_fake_mnist

    box = sandbox(tmp_path_factory.mktemp("docs"))
    write_fake_mnist(box / "data" / "mnist", np.random.default_rng(0), n_train=60, n_test=40)
    return box


def test_docs_have_commands():
    pages = {c.page for c in all_commands()}
    assert {"index.md", "tutorial.md", "cli.md", "api.md", "results.md"} <= {p.name for p in DOCS.glob("*.md")}
    assert {"tutorial.md", "cli.md"} <= pages
    assert len(all_commands()) >= 10


@pytest.mark.parametrize("cmd", _params())
def test_console_command(cmd: Command, where: Path, monkeypatch, capsys):
    for key, why in COVERED_ELSEWHERE.items():
        if key in cmd.text:
            pytest.skip(f"covered elsewhere: {why}")
    solver = re.search(r"--solver (\S+)", cmd.text)
    if solver:
        from mlrobust.backends.registry import get_backend
        from mlrobust.errors import SolverNotAvailableError

        try:
            get_backend(solver.group(1))
        except SolverNotAvailableError as exc:
            pytest.skip(f"solver not installed here: {exc}")
    if cmd.text.startswith("mlrobust data double-mnist"):
        cmd = Command(cmd.page, cmd.text + " --skip-md5", cmd.output)  # the fake MNIST files have other checksums
    if cmd.argv[0] == "mlrobust":
        code, output = run_in_process(cmd.argv[1:], where, monkeypatch, capsys)
    else:
        code, output, _ = run(cmd, where)
    want = cmd.expected_code
    assert code == want, f"$ {cmd.text}\n{output[-3000:]}"
    if cmd.expects_error:
        # the same message the page shows (paths and numbers may differ in a sandbox)
        assert output.splitlines()[0].split(":")[0] == cmd.output[0].split(":")[0]


def run_in_process(args: list[str], cwd: Path, monkeypatch, capsys) -> tuple[int, str]:
    """``mlrobust ARGS`` in this process (the import of torch and the solvers is paid once for all commands)."""
    from mlrobust.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["mlrobust", *args])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return code, out.out + out.err


def python_blocks() -> list:
    out = []
    for page in sorted(DOCS.glob("*.md")):
        for i, block in enumerate(re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M)):
            marks = [pytest.mark.slow] if any(s in block for s in SLOW) else []
            out.append(pytest.param(block, marks=marks, id=f"{page.name}:python{i}"))
    return out


@pytest.mark.parametrize("code", python_blocks())
def test_python_block(code: str, where: Path):
    proc = subprocess.run([sys.executable, "-c", code], cwd=where, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, code + "\n" + proc.stdout[-2000:] + proc.stderr[-3000:]


def _cli_options() -> dict[str, list[str]]:
    """Every command path of the CLI and its option names."""
    import typer

    from mlrobust.cli import _register, app

    _register()
    group = typer.main.get_command(app)
    out: dict[str, list[str]] = {}

    def walk(cmd, path):
        sub = getattr(cmd, "commands", None)
        if sub:
            for name, child in sub.items():
                walk(child, path + [name])
            return
        opts = [o for p in cmd.params for o in p.opts if o.startswith("--") and o != "--help"]
        out[" ".join(path)] = opts

    walk(group, [])
    return out


def test_cli_md_documents_every_command_and_option():
    text = (DOCS / "cli.md").read_text()
    missing = []
    for path, opts in _cli_options().items():
        if f"mlrobust {path}" not in text:
            missing.append(f"mlrobust {path}")
        section = text.split(f"## mlrobust {path}", 1)[-1].split("\n## ", 1)[0]
        missing += [f"mlrobust {path} {o}" for o in opts if not re.search(rf"`{re.escape(o)}\b", section)]
    assert not missing, "docs/cli.md lacks: " + ", ".join(missing)


def test_download_mnist_without_network_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import urllib.request

    from mlrobust.cli import main

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr("sys.argv", ["mlrobust", "data", "download-mnist", str(tmp_path / "mnist")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    assert "network is unreachable" in capsys.readouterr().err


def test_results_pages_are_what_the_committed_results_produce(tmp_path):
    """docs/results.md and benchmarks/results/full.md are generated from full.json (``python -m benchmarks docs`` and
    ``python -m benchmarks report``): regenerated here, they must equal the committed pages."""
    import shutil

    from benchmarks.__main__ import main as bench_main

    results = ROOT / "benchmarks" / "results" / "full.json"
    copy = tmp_path / "benchmarks" / "results" / "full.json"
    copy.parent.mkdir(parents=True)
    shutil.copy(results, copy)
    if results.with_name("checks.json").is_file():  # the default method's section, first on the page
        shutil.copy(results.with_name("checks.json"), copy.with_name("checks.json"))
    (tmp_path / "docs").mkdir()
    assert bench_main(["docs", "--results", str(copy), "--out", str(tmp_path / "docs" / "results.md")]) == 0
    assert (tmp_path / "docs" / "results.md").read_text() == (DOCS / "results.md").read_text()
    assert bench_main(["report", str(copy)]) == 0
    assert copy.with_suffix(".md").read_text() == results.with_suffix(".md").read_text()
    for link in re.findall(r"\]\((\.\./benchmarks/results/[^)]+)\)", (DOCS / "results.md").read_text()):
        assert (DOCS / link).resolve().is_file(), link
