"""The docs run: every ``memfit ...`` command in a fenced ```bash block of docs/guide.md exits 0
through :func:`memfit.cli.main`, and docs/methodology.md documents every term memfit explains.

The output shown under a command (the ```text block right after its ```bash block) is what
the command printed when the guide was last refreshed. To refresh every output block (and
the pictures in docs/img that the guide's ``memfit plot`` commands write), run

    MEMFIT_UPDATE_GOLDEN=1 pytest tests/test_docs.py

and review the diff. Without it the commands are run (pictures go to a temporary folder) and
only their exit status is checked, so a change to an estimator does not break this test.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from memfit.cli import main

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "guide.md"
METHODOLOGY = ROOT / "docs" / "methodology.md"
UPDATE = os.environ.get("MEMFIT_UPDATE_GOLDEN") == "1"

_FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass
class Block:
    lang: str
    start: int  # index of the opening fence line
    end: int  # index of the closing fence line
    lines: list[str]


def blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, with their line spans."""
    lines = text.split("\n")
    out, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m and m.group(1):
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            out.append(Block(m.group(1), i, j, lines[i + 1:j]))
            i = j + 1
            continue
        i += 1
    return out


def commands(block: Block) -> list[str]:
    return [ln.strip() for ln in block.lines if ln.strip().startswith("memfit ")]


def guide_commands() -> list[str]:
    return [c for b in blocks(GUIDE.read_text(encoding="utf-8")) if b.lang == "bash"
            for c in commands(b)]


def run_command(command: str, out_dir: Path | None) -> tuple[int, str, str]:
    """Run one ``memfit ...`` line through main(); ``-o`` files go to ``out_dir`` if given."""
    argv = shlex.split(command)[1:]
    if out_dir is not None:
        for i, a in enumerate(argv[:-1]):
            if a in ("-o", "--output"):
                argv[i + 1] = str(out_dir / Path(argv[i + 1]).name)
    stdout, stderr = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(argv)
    finally:
        os.chdir(cwd)
    return code, stdout.getvalue(), stderr.getvalue()


def _needs_matplotlib(command: str) -> bool:
    return command.split()[1] == "plot"


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_the_guide_has_examples() -> None:
    cmds = guide_commands()
    assert len(cmds) >= 10
    for word in ("infer", "train", "fit", "compare", "plot", "--explain"):
        assert any(word in c.split() for c in cmds), word


@pytest.mark.parametrize("command", guide_commands())
def test_guide_command_runs(command: str, tmp_path: Path) -> None:
    if _needs_matplotlib(command) and not _has_matplotlib():
        pytest.skip("the plot extra (matplotlib) is not installed")
    code, out, err = run_command(command, None if UPDATE else tmp_path)
    assert code == 0, f"{command}\n{err}"


def refresh_guide() -> None:
    """Rewrite every ```text block that follows a ```bash block of memfit commands with what
    those commands print now."""
    text = GUIDE.read_text(encoding="utf-8")
    lines = text.split("\n")
    bl = blocks(text)
    edits: list[tuple[int, int, list[str]]] = []
    for a, b in zip(bl, bl[1:], strict=False):
        cmds = commands(a)
        between = lines[a.end + 1:b.start]
        if a.lang != "bash" or not cmds or b.lang != "text" or any(s.strip() for s in between):
            continue
        outs = []
        for c in cmds:
            code, out, err = run_command(c, None)
            assert code == 0, f"{c}\n{err}"
            outs.append(out.rstrip("\n"))
        edits.append((b.start + 1, b.end, "\n\n".join(outs).split("\n")))
    for start, end, new in reversed(edits):
        lines[start:end] = new
    GUIDE.write_text("\n".join(lines), encoding="utf-8")


@pytest.mark.skipif(not UPDATE, reason="set MEMFIT_UPDATE_GOLDEN=1 to refresh the guide")
def test_refresh_guide_outputs() -> None:
    refresh_guide()


# -- methodology.md covers every term ----------------------------------------------------------

def _term_names() -> set[str]:
    from memfit.inference import infer
    from memfit.training import train

    ests = [infer("llama-3.1-8b"), infer("mixtral-8x7b", engine="vllm", tp=2),
            infer("llama-2-7b", engine="llamacpp", weights="q4_k_m"),
            train("llama-3.1-8b"), train("llama-3.1-8b", dp=8, zero=3),
            train("llama-3.1-8b", lora_rank=16), train("mixtral-8x7b", dp=8, fsdp="full")]
    return {t.name.split("/")[0] for e in ests for t in e.terms}


def test_methodology_documents_every_term() -> None:
    text = METHODOLOGY.read_text(encoding="utf-8")
    missing = sorted(n for n in _term_names()
                     if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text))
    assert not missing, f"docs/methodology.md does not name these terms: {missing}"


def test_methodology_has_the_accuracy_table() -> None:
    text = METHODOLOGY.read_text(encoding="utf-8")
    assert "benchmarks/accuracy.py" in text and "median |error|" in text
