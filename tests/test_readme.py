"""The README is a tutorial that runs: every command and Python block in it executes as written.

The blocks run in a fresh directory holding the two things a fresh clone has at its root that the README names,
``models/`` and ``snncc/sample/`` (linked, read-only use), so every file a block writes lands in that directory.
``PYTHONSAFEPATH=1`` keeps that directory off ``sys.path``: the installed snncc is imported, as for a user. The two
setup commands (they install packages) are not executed; instead the test checks that ``.ci/run`` runs exactly the
README's test command.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

README = REPO / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def readme_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced code block of the README, in order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(README.read_text(encoding="utf-8"))]


def commands(text: str) -> list[str]:
    """The shell commands of a block: lines joined at trailing backslashes, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _is_setup(text: str) -> bool:
    return "pip install" in text


def _runnable() -> list[tuple[str, str]]:
    return [(lang, text) for lang, text in readme_blocks() if not _is_setup(text) and lang in ("bash", "python")]


def test_ci_runs_exactly_the_readme_test_command():
    setup = [commands(text) for _, text in readme_blocks() if _is_setup(text)]
    assert len(setup) == 2, "the README must hold exactly two setup commands: the main job and the tests"
    (demo,), (tests,) = setup
    assert "pytest" in tests and "pytest" not in demo
    ci = (REPO / ".ci" / "run").read_text()
    assert tests in [line.strip() for line in ci.splitlines()], ".ci/run must run the README's test command"


def test_every_block_is_tagged():
    """Untagged blocks would be skipped silently: every block says whether it is bash, python or text output."""
    for lang, text in readme_blocks():
        assert lang in ("bash", "python", "text"), f"README block without a language tag: {text[:60]!r}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory laid out like the root of a clone, for the blocks to write into."""
    root = tmp_path_factory.mktemp("readme")
    (root / "models").symlink_to(REPO / "models")
    (root / "snncc").mkdir()
    (root / "snncc" / "sample").symlink_to(REPO / "snncc" / "sample")
    return root


@pytest.mark.parametrize("index", range(len(_runnable())))
def test_readme_block_runs_as_written(index, workdir):
    """The blocks run in order (a later one may read what an earlier one wrote), each as written."""
    blocks = _runnable()
    env = dict(os.environ, PYTHONSAFEPATH="1", MPLBACKEND="Agg")
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")  # this interpreter's snncc and python
    for lang, text in blocks[:index + 1]:
        done = workdir / f".block-{blocks.index((lang, text))}-done"
        if done.exists():
            continue
        runs = [["bash", "-euo", "pipefail", "-c", c] for c in commands(text)] if lang == "bash" \
            else [[sys.executable, "-"]]
        for argv in runs:
            result = subprocess.run(argv, input=text if lang == "python" else None, cwd=workdir, env=env,
                                    capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, \
                f"README block {blocks.index((lang, text))} failed: {argv[-1][:200]}\n{result.stdout[-2000:]}\n" \
                f"{result.stderr[-3000:]}"
        done.touch()
