"""scripts/test, the README's second command and CI's: what it installs, and what it says when it can't."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "scripts" / "test"


def stub(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(0o755)


def run_script(tmp_path: Path, *, uid: int, require: bool = False) -> tuple[subprocess.CompletedProcess, str]:
    """Run scripts/test with a stub venv (pip, python log their arguments), no browser, a stub `id`."""
    log = tmp_path / "calls.log"
    venv = tmp_path / "venv"
    stub(venv / "bin" / "pip", f'echo "pip $*" >> {log}')
    stub(venv / "bin" / "python", f'echo "python $* | $FEWTUNE_BROWSER_MISSING" >> {log}')
    stub(tmp_path / "path" / "id", f"echo {uid}")
    stub(tmp_path / "path" / "apt-get", f'echo "apt-get $*" >> {log}; exit 100')  # no network here
    env = {
        **os.environ,
        "FEWTUNE_VENV": str(venv),
        "PATH": f"{tmp_path / 'path'}:{os.environ['PATH']}",
        "FEWTUNE_CHROMIUM": str(tmp_path / "no-chromium"),
        "FEWTUNE_CHROMEDRIVER": str(tmp_path / "no-driver"),
    }
    env.pop("FEWTUNE_BROWSER_MISSING", None)
    env.pop("FEWTUNE_REQUIRE_BROWSER", None)  # .ci/run exports it; each case sets it itself
    if require:
        env["FEWTUNE_REQUIRE_BROWSER"] = "1"
    result = subprocess.run(
        [str(SCRIPT), "-x", "tests/test_cli.py"], env=env, capture_output=True, text=True, timeout=60
    )
    return result, log.read_text() if log.exists() else ""


def test_not_root_says_in_one_line_what_to_install_and_the_browser_tests_skip(tmp_path):
    result, calls = run_script(tmp_path, uid=1000)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "browser tests skipped: as root, run: apt-get install -y chromium chromium-driver"
    ]
    assert not [line for line in calls.splitlines() if line.startswith("apt-get")]
    assert "pip install --quiet -e .[dev]" in calls
    # pytest gets the caller's arguments and the reason the browser tests skip
    assert "python -m pytest -x tests/test_cli.py | browser tests skipped: as root" in calls


def test_root_installs_chromium_first_and_ci_fails_when_it_cannot(tmp_path):
    result, calls = run_script(tmp_path, uid=0, require=True)
    assert "apt-get update -qq" in calls
    assert result.returncode == 2
    assert "apt-get install -y chromium chromium-driver" in result.stdout
    assert "python -m pytest" not in calls  # CI never runs a suite with the browser tests skipped


def test_browser_tests_skip_with_the_reason_scripts_test_gives(tmp_path):
    """What the one line promises: the browser tests skip, saying what to install."""
    import sys

    reason = "browser tests skipped: as root, run: apt-get install -y chromium chromium-driver"
    env = {**os.environ, "FEWTUNE_BROWSER_MISSING": reason, "FEWTUNE_TEST_ARTIFACTS": str(tmp_path)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            f"{SCRIPT.parent.parent}/tests/test_reports.py",
            "-k",
            "evaluate_report_in_a_browser",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert "1 skipped" in result.stdout and reason in result.stdout
