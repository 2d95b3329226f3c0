"""What a user gets from the package index: the sdist and the wheel hold what they should, the README
(the index page) links only to absolute URLs that exist, and the wheel installed alone, in a fresh
virtual environment, runs the quickstart against the devserver it brings.

The distributions are those ``./scripts/test`` built (``FLAMEUP_TEST_DIST``), or built here.
"""

from __future__ import annotations

import email
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = (ROOT / "pyproject.toml").read_text()
# The base of every absolute link, from [project.urls] (read without tomllib: Python 3.10 has none).
REPOSITORY = re.findall(r'^Source = "([^"]+)"$', PYPROJECT, flags=re.MULTILINE)[0]
# Inline links, [text](target), and reference definitions, [name]: target.
LINK = re.compile(r"\]\((?P<inline>[^)\s]+)\)|^\[[^\]]+\]:\s*(?P<reference>\S+)", re.MULTILINE)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("FLAMEUP_TEST_DIST")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return out


def only(directory: Path, pattern: str) -> Path:
    (found,) = directory.glob(pattern)
    return found


# --- links -------------------------------------------------------------------------------------


def test_the_repository_url_is_the_same_everywhere() -> None:
    mkdocs = (ROOT / "mkdocs.yml").read_text()
    assert f"repo_url: {REPOSITORY}\n" in mkdocs
    urls = PYPROJECT.partition("[project.urls]\n")[2].partition("\n\n")[0].splitlines()
    assert len(urls) >= 4 and all(re.fullmatch(r'\w+ = "https://\S+"', line) for line in urls), urls
    assert all(f'"{REPOSITORY}' in line or "https://flameup.ai" in line for line in urls), urls


def test_readme_links_are_absolute_and_those_into_the_repository_exist() -> None:
    links = [inline or reference for inline, reference in LINK.findall((ROOT / "README.md").read_text())]
    assert links, "no links found: the pattern is wrong"
    relative = [link for link in links if not link.startswith("https://")]
    assert relative == [], "relative links die on the package index page"
    missing = []
    for link in links:
        match = re.fullmatch(re.escape(REPOSITORY) + r"/(?:blob|tree)/main/(?P<path>[^#]+)(#.*)?", link)
        if link.startswith(REPOSITORY) and (match is None or not (ROOT / match["path"]).exists()):
            missing.append(link)
    assert missing == []


# --- what the distributions hold --------------------------------------------------------------


def test_the_sdist_holds_the_package_license_and_changelog_and_no_tests(dist: Path) -> None:
    with tarfile.open(only(dist, "*.tar.gz")) as sdist:
        names = {name.partition("/")[2] for name in sdist.getnames()}
    assert {"LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "flameup_analytics/py.typed"} <= names
    assert "flameup_analytics/testing/openapi.yaml" in names
    # The tests need the repository (examples/, docs/, conftest.py) and its dev tools: not shipped.
    assert [name for name in names if name.startswith(("tests/", "examples/", "bench/"))] == []


def test_the_wheel_carries_the_license_urls_and_typing_marker(dist: Path) -> None:
    with zipfile.ZipFile(only(dist, "*.whl")) as wheel:
        names = set(wheel.namelist())
        metadata_name = next(name for name in names if name.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(wheel.read(metadata_name))
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert {"flameup_analytics/py.typed", "flameup_analytics/testing/openapi.yaml"} <= names
    assert metadata["License-Expression"] == "MIT"
    assert f"Source, {REPOSITORY}" in metadata.get_all("Project-URL", [])
    assert not [name for name in names if name.startswith("tests/")]


# --- the wheel, installed alone ----------------------------------------------------------------


def outside_env(**extra: str) -> dict[str, str]:
    """The environment for the fresh virtualenv's processes: none of this one's Python settings
    (a PYTHONPATH would show them the source tree, and pip would take it for the installed SDK)."""
    kept = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("FLAMEUP_", "PYTHON", "COVERAGE", "VIRTUAL_ENV"))
    }
    return {**kept, **extra}


@pytest.fixture(scope="module")
def fresh_env(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with the wheel and its runtime dependencies only (from the
    package index, as a user would install it; pip's cache makes the next runs quick)."""
    home = tmp_path_factory.mktemp("venv") / "env"
    venv.create(home, with_pip=True)
    python = home / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         str(only(dist, "*.whl"))],
        env=outside_env(), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    return home


def test_the_wheel_installs_without_the_dev_tools(fresh_env: Path) -> None:
    dev_tools = ("pytest", "openapi_core", "django", "mkdocs")
    probe = f"import importlib.util as u; print([m for m in {dev_tools!r} if u.find_spec(m)])"
    result = subprocess.run(
        [str(fresh_env / "bin" / "python"), "-c", probe],
        env=outside_env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert result.stdout.strip() == "[]"


@pytest.fixture
def devserver(fresh_env: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    """``flameup-analytics devserver --port 0 --json`` from the fresh environment, and the
    environment it tells clients to use."""
    process = subprocess.Popen(
        [str(fresh_env / "bin" / "flameup-analytics"), "devserver", "--port", "0", "--json"],
        env=outside_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first, process.stderr.read() if process.stderr else ""
        listening = json.loads(first)
        assert listening["event"] == "listening", listening
        yield process, listening["env"]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_quickstart_runs_against_the_devserver_from_the_wheel_alone(
    fresh_env: Path, devserver: tuple[subprocess.Popen[str], dict[str, str]], tmp_path: Path
) -> None:
    process, server_env = devserver
    env = outside_env(**server_env, XDG_CACHE_HOME=str(tmp_path / "cache"))
    result = subprocess.run(
        [str(fresh_env / "bin" / "python"), str(ROOT / "examples" / "quickstart.py")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "everything delivered" in result.stdout

    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    events = [json.loads(line) for line in stdout.splitlines()]
    requests = [event for event in events if event["event"] == "request"]
    assert len(requests) == 23 and all(event["status"] == 200 for event in requests)
    assert events[-1] == {"event": "stopped", "requests": 23, "accepted": 23}
