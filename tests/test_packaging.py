"""Packaging: the README's two commands, the extras the tests need, the licence, the version.

The README promises two commands that work on a fresh machine: one installs memfit and runs
its main job, one installs what the tests need and runs them; ``.ci/run`` runs the second
verbatim after its system setup. These tests hold the files to those promises.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

import memfit
from memfit.cli import main

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
README = (ROOT / "README.md").read_text(encoding="utf-8")
CI = (ROOT / ".ci" / "run").read_text(encoding="utf-8")

# Each module the tests import only when present (pytest.importorskip, find_spec), and the
# requirement of the `test` extra (direct or through an extra it pulls) that installs it,
# with the package that brings it when that is not its own distribution.
OPTIONAL_IMPORTS = {
    "torch": "torch", "torch.distributed": "torch", "transformers": "transformers",
    "safetensors": "transformers", "safetensors.torch": "transformers", "peft": "peft",
    "bitsandbytes": "bitsandbytes", "huggingface_hub": "huggingface_hub",
    "huggingface_hub.constants": "huggingface_hub", "fastapi": "fastapi",
    "uvicorn": "uvicorn", "httpx2": "httpx2", "httpx": "httpx2",  # either drives TestClient
    "playwright.sync_api": "playwright", "matplotlib": "matplotlib", "gguf": "gguf",
    "numpy": "numpy", "yaml": "gguf", "atheris": "atheris",
}


def _block(text: str, heading: str) -> str:
    """The first ```bash block under the ``## heading`` of ``text``."""
    section = text.split(f"## {heading}\n", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, f"no bash block under '## {heading}'"
    return match.group(1).strip()


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _extra(name: str) -> set[str]:
    """The requirement names an extra installs, self-references (memfit[a,b]) expanded."""
    out: set[str] = set()
    for req in PYPROJECT["project"]["optional-dependencies"][name]:
        if _name(req) == "memfit":
            for sub in req.split("[", 1)[1].split("]", 1)[0].split(","):
                out |= _extra(sub.strip())
        else:
            out.add(_name(req))
    return out


def _test_imports() -> set[str]:
    """The modules tests/*.py import conditionally."""
    names: set[str] = set()
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            attr = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if attr in ("importorskip", "find_spec") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.add(arg.value)
    return names | {"httpx2", "httpx"}  # tests/test_web.py: find_spec(m) for m in (...)


# -- the README's commands ---------------------------------------------------------------------

def test_readme_install_command_runs_the_main_job(capsys: pytest.CaptureFixture[str]) -> None:
    command = _block(README, "Install and run")
    install, run = (part.strip() for part in command.split("&&"))
    assert install == "pip install -e ."
    argv = shlex.split(run)
    assert argv[0] == "memfit" and argv[1] == "infer"
    assert main(argv[1:]) == 0
    out = capsys.readouterr().out
    assert "Fit: FITS on h100" in out and "weights" in out


def test_readme_test_command_is_what_ci_runs() -> None:
    command = _block(README, "Tests")
    assert command == 'pip install -e ".[test]" && python -m pytest'
    lines = [line.strip() for line in CI.splitlines()]
    assert command in lines, ".ci/run must run the README's test command verbatim"
    torch_line = next(i for i, line in enumerate(lines) if 'pip install -q "torch==2.13.0"' in line)
    assert torch_line < lines.index(command), "CI installs its CPU torch first"
    after = lines[lines.index(command):]
    assert any("torch.__version__.startswith('2.13.0')" in line for line in after)
    assert "ruff check ." in after and "mypy" in after


def test_every_module_the_tests_need_is_in_the_test_extra() -> None:
    imports = _test_imports()
    unknown = sorted(imports - set(OPTIONAL_IMPORTS))
    assert not unknown, f"add {unknown} to the test extra and to OPTIONAL_IMPORTS"
    test = _extra("test")
    missing = sorted({_name(OPTIONAL_IMPORTS[m]) for m in imports} - test)
    assert not missing, f"the test extra lacks {missing}"
    assert {"pytest", "hypothesis"} <= test
    assert _extra("test") <= _extra("dev") and {"ruff", "mypy"} <= _extra("dev")


def test_user_facing_ranges_and_web_test_floors() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    trace = {_name(r): r for r in extras["trace"]}
    assert "==" not in trace["torch"], "a pin would downgrade a user's torch or pull CUDA"
    test = {_name(r): r for r in extras["test"]}
    # Starlette's TestClient drives httpx2 from 1.2 on (older ones need httpx)
    floor = re.search(r">=\s*([\d.]+)", test["starlette"])
    assert floor and tuple(map(int, floor.group(1).split("."))) >= (1, 2)
    assert re.search(r">=\s*2", test["httpx2"])


# -- licence, typing, version --------------------------------------------------------------------

def test_license_file_and_spdx_expression() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    requires = PYPROJECT["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(\d+)", r) and int(r.split(">=")[1]) >= 77
               for r in requires), requires


def test_py_typed_ships() -> None:
    assert (ROOT / "src" / "memfit" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["memfit"]


def test_version_has_one_definition() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "memfit.__version__"}
    definitions = [p for p in (ROOT / "src").rglob("*.py")
                   if re.search(r"^__version__\s*=", p.read_text(encoding="utf-8"), re.M)]
    assert definitions == [ROOT / "src" / "memfit" / "__init__.py"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", memfit.__version__)


def test_version_flag_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"memfit {memfit.__version__}"


# -- install hints -------------------------------------------------------------------------------

def _texts() -> list[tuple[Path, str]]:
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "src" / "memfit").rglob("*.py"))]
    return [(p, p.read_text(encoding="utf-8")) for p in paths]


@pytest.mark.parametrize("pattern", [r"pip install[^\n`]*memfit\[",
                                     r"pip install (?:-U |--upgrade )?['\"]?memfit\b"])
def test_no_install_from_an_index_memfit_is_not_on(pattern: str) -> None:
    found: list[Any] = [(p.relative_to(ROOT).as_posix(), m.group(0))
                        for p, text in _texts() for m in re.finditer(pattern, text)]
    assert not found, found
