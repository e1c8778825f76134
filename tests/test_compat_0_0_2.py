"""Drop-in compatibility with torch-streamer 0.0.2 (issue 12): its own ``tests/test_core.py``
passes against this library, except the ``*_invalid`` tests, which check 0.0.2's error codes.

The test file is read from 0.0.2's sdist, which ``make`` downloads to ``.venv/compat``
(``pip download --no-deps --no-binary :all: torch-streamer==0.0.2 -d .venv/compat``); set
``TORCHSTREAMER_COMPAT_SDIST`` to use another copy. Without the sdist the test is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SDIST = ROOT / ".venv" / "compat" / "torch_streamer-0.0.2.tar.gz"
MEMBER = "torch_streamer-0.0.2/tests/test_core.py"

# 0.0.2's tests run with hypothesis's defaults, whose 200 ms deadline fails on the first
# (TorchScript-compiling) example of a slow machine; the profile only lifts the deadline
# (and, outside the thorough profile, runs fewer examples). Their code is run unchanged.
CONFTEST = """\
import os

from hypothesis import settings

thorough = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
settings.register_profile("compat", deadline=None, max_examples=100 if thorough else 30)
settings.load_profile("compat")
"""


def sdist() -> Path:
    path = Path(os.environ.get("TORCHSTREAMER_COMPAT_SDIST", SDIST))
    if not path.is_file():
        pytest.skip(
            f"torch-streamer 0.0.2's sdist is not at {path}: run `pip download --no-deps "
            "--no-binary :all: torch-streamer==0.0.2 -d .venv/compat` (or set "
            "TORCHSTREAMER_COMPAT_SDIST) to run its tests against this library."
        )
    return path


def test_torch_streamer_0_0_2_core_tests_pass(tmp_path: Path) -> None:
    with tarfile.open(sdist()) as archive:
        member = archive.extractfile(MEMBER)
        assert member is not None, f"{MEMBER} is not a file in the sdist"
        (tmp_path / "test_core.py").write_bytes(member.read())
    (tmp_path / "conftest.py").write_text(CONFTEST)
    # run from tmp_path, so that `import torchstreamer` is this library, not the sdist's copy
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
            "-k", "not invalid", "test_core.py",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def test_a_missing_sdist_skips_with_the_command_that_fetches_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHSTREAMER_COMPAT_SDIST", str(tmp_path / "absent.tar.gz"))
    with pytest.raises(pytest.skip.Exception, match=r"absent\.tar\.gz: run `pip download"):
        sdist()
