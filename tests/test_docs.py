"""The documentation holds: every Python block of README.md and docs/ runs against the local server,
the API reference names every public name, every public name has a docstring, and the
troubleshooting page lists every message the SDK logs.

A block runs as a script in a fresh process, with FLAMEUP_HOST, FLAMEUP_API_KEY and
FLAMEUP_WORKSPACE_ID pointing at a LocalServer and the spool under the test's directory. It passes
when it exits 0, writes nothing to stderr (so the SDK logged no warning or error), the server
refused none of its requests, and it has no undefined name (ruff's pyflakes rules: this covers
the bodies of functions the block only defines). A block that defines ``test_*`` functions runs
under pytest instead. Conventions, for those who write the docs:

- A block whose first line is a comment naming a Python file (``# myapp/apps.py``) is that file of
  a small project: every such block of the page is written there first, so the page's other blocks
  can import it.
- ``<!-- docs: partial (why) -->`` on the line before a block marks a deliberate fragment: it only
  has to be valid Python. Keep them few.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import griffe
import pytest

import flameup_analytics as fa
import flameup_analytics.testing
from flameup_analytics.testing import LocalServer

from .conftest import API_KEY, WORKSPACE

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PARTIAL = re.compile(r"<!--\s*docs:\s*partial\s*\((?P<why>.+)\)\s*-->")
FILE_COMMENT = re.compile(r"#\s*(?P<path>[\w/.-]+\.py)\s*")

#: Blocks that fail as written, in pages that are being rewritten elsewhere, with the failure.
#: Each is an expected failure (strict: once the block is fixed, its entry must go).
KNOWN_FAILURES: dict[str, str] = {}


@dataclass(frozen=True)
class Block:
    page: Path
    number: int  # 1-based, among the page's Python blocks
    line: int
    code: str
    partial: str | None  # why the block is a fragment, when it is one

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT).as_posix()}#{self.number}"

    @property
    def file(self) -> str | None:
        """The project file this block is, when its first line names one."""
        first = self.code.lstrip().partition("\n")[0]
        match = FILE_COMMENT.fullmatch(first.strip())
        return match["path"] if match else None


def python_blocks(page: Path) -> list[Block]:
    """The ```python blocks of a page, indented ones (in list items) included, dedented."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        if re.fullmatch(r"\s*```python\s*", lines[index]) is None:
            index += 1
            continue
        start = index
        index += 1
        while index < len(lines) and lines[index].strip() != "```":
            index += 1
        previous = next((line for line in reversed(lines[:start]) if line.strip()), "")
        partial = PARTIAL.search(previous)
        code = textwrap.dedent("\n".join(lines[start + 1 : index])) + "\n"
        blocks.append(Block(page, len(blocks) + 1, start + 1, code, partial["why"] if partial else None))
        index += 1
    return blocks


BLOCKS = [block for page in PAGES for block in python_blocks(page)]


def block_params(blocks: list[Block]) -> list[object]:
    return [
        pytest.param(block, id=block.id, marks=_known_failure(KNOWN_FAILURES.get(block.id)))
        for block in blocks
    ]


def _known_failure(failure: str | None) -> list[pytest.MarkDecorator]:
    return [pytest.mark.xfail(strict=True, reason=failure)] if failure else []


def test_the_blocks_are_found() -> None:
    found = {block.id for block in BLOCKS}
    assert {"README.md#1", "docs/getting-started.md#1", "docs/testing.md#1"} <= found
    assert set(KNOWN_FAILURES) <= found, "an entry of KNOWN_FAILURES names no block"


@pytest.mark.parametrize("block", block_params([b for b in BLOCKS if b.partial is None]))
def test_block_runs_against_the_local_server(block: Block, server: LocalServer, tmp_path: Path) -> None:
    project = tmp_path / "project"
    for other in python_blocks(block.page):
        if other.file is not None:
            (project / other.file).parent.mkdir(parents=True, exist_ok=True)
            (project / other.file).write_text(other.code)
    script = project / (block.file or "block.py")
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(block.code)

    lint = subprocess.run(
        # Pyflakes' rules, less those that flag what examples do on purpose (an import or a
        # result shown but not used).
        [sys.executable, "-m", "ruff", "check", "--isolated", "--select", "F", "--ignore", "F401,F841",
         "--output-format", "concise", str(script)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert lint.returncode == 0, f"{block.id} (line {block.line}):\n{lint.stdout}"

    defines_tests = any(
        isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        for node in ast.parse(block.code).body
    )
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(script)]
    result = subprocess.run(
        command if defines_tests else [sys.executable, str(script)],
        cwd=project,
        env={
            **os.environ,
            "FLAMEUP_HOST": server.url,
            "FLAMEUP_API_KEY": API_KEY,
            "FLAMEUP_WORKSPACE_ID": WORKSPACE,
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
            # The page's files first; then what the suite itself runs with.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(project), os.environ.get("PYTHONPATH")])),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"{block.id} (line {block.line}):\n{result.stdout}\n{result.stderr}"
    assert result.stderr == "", f"{block.id} (line {block.line}) wrote to stderr:\n{result.stderr}"
    refused = [(r.method, r.path, r.status, r.error) for r in server.requests if not 200 <= r.status < 300]
    assert refused == [], f"{block.id} (line {block.line}): the server refused requests"


@pytest.mark.parametrize("block", block_params([b for b in BLOCKS if b.partial is not None]))
def test_partial_block_is_valid_python(block: Block) -> None:
    assert syntax_error(block) is None, f"{block.id} (line {block.line}) is not valid Python"


def syntax_error(block: Block) -> str | None:
    """Why ``block`` does not compile, or None when it does."""
    try:
        compile(block.code, block.id, "exec")
    except SyntaxError as exc:
        return str(exc)
    return None


# --- the API reference -------------------------------------------------------------------------

PUBLIC_NAMES = [("flameup_analytics", name) for name in fa.__all__ if name != "__version__"] + [
    ("flameup_analytics.testing", name) for name in flameup_analytics.testing.__all__
]
#: Classes whose public methods must each have a docstring too.
DOCUMENTED_METHODS_OF = [
    "Client",
    "Transport",
    "HTTPTransport",
    "RequestsTransport",
    "MockTransport",
    "Response",
]

#: Public names without a docstring today, written by whoever owns their module. Strict: an entry
#: whose docstring was written must go.
MISSING_DOCSTRINGS: set[str] = set()


def test_the_reference_page_documents_every_public_name() -> None:
    page = (ROOT / "docs" / "api.md").read_text()
    documented = set(re.findall(r"^::: ([\w.]+)$", page, flags=re.MULTILINE))
    assert set(PUBLIC) <= documented
    assert "__version__" in page


@functools.cache
def package() -> griffe.Module:
    """The package as mkdocstrings reads it: with the docstrings as written in the source, not
    those Python makes up (a dataclass without one gets its signature as ``__doc__``)."""
    loaded = griffe.load("flameup_analytics", search_paths=[str(ROOT)], resolve_aliases=True)
    assert isinstance(loaded, griffe.Module)
    return loaded


def object_path(module: str, name: str) -> str:
    """Where griffe (and so the reference) finds ``module.name``: a function named after the module
    it is defined in (``testing.capture``) is reached through that module."""
    path = f"{module}.{name}"
    return f"{path}.{name}" if package()[path.removeprefix("flameup_analytics.")].is_module else path


PUBLIC = [object_path(module, name) for module, name in PUBLIC_NAMES]


def public_objects() -> Iterator[str]:
    yield from PUBLIC
    for cls in DOCUMENTED_METHODS_OF:
        for method in sorted(_public_methods(cls)):
            yield f"flameup_analytics.{cls}.{method}"


def _public_methods(cls: str) -> set[str]:
    members = package()[cls].all_members
    return {name for name, member in members.items() if not name.startswith("_") and member.is_function}


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(
            path, id=path, marks=_known_failure("no docstring yet" if path in MISSING_DOCSTRINGS else None)
        )
        for path in public_objects()
    ],
)
def test_public_name_has_a_docstring(path: str) -> None:
    obj = package()[path.removeprefix("flameup_analytics.")]
    assert obj.docstring is not None and obj.docstring.value.strip(), f"{path} has no docstring"


# --- the troubleshooting page ------------------------------------------------------------------

LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical", "_warn"}


def logged_messages() -> Iterator[tuple[str, str]]:
    """(where, format string) of every logging call in the package's source."""
    for source in sorted((ROOT / "flameup_analytics").rglob("*.py")):
        tree = ast.parse(source.read_text(), str(source))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            receiver = node.func.value
            is_logger = isinstance(receiver, ast.Name) and "log" in receiver.id.lower()
            if node.func.attr not in LOG_METHODS or not (is_logger or node.func.attr == "_warn"):
                continue
            texts = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if texts:
                yield f"{source.relative_to(ROOT)}:{node.lineno}", max(texts, key=len)


def test_the_log_messages_are_found() -> None:
    messages = dict(logged_messages())
    assert any("shutdown deadline" in text for text in messages.values()), messages


@pytest.mark.parametrize(("where", "message"), list(logged_messages()), ids=lambda value: str(value)[:60])
def test_troubleshooting_lists_every_log_message(where: str, message: str) -> None:
    page = " ".join((ROOT / "docs" / "troubleshooting.md").read_text().split())
    for fragment in re.split(r"%[-+ #0-9.]*[sdrif]", message):
        assert " ".join(fragment.split()) in page, f"{where}: {message!r} is not in docs/troubleshooting.md"


# --- the contributors' map ---------------------------------------------------------------------


def test_contributing_names_every_module_of_the_package() -> None:
    page = (ROOT / "docs" / "contributing.md").read_text()
    package_dir = ROOT / "flameup_analytics"
    unnamed = []
    for source in sorted(package_dir.rglob("*.py")):
        module = source.relative_to(package_dir)
        if module.name in {"__main__.py", "_version.py"} or module == Path("__init__.py"):
            continue
        # A module is on the map by its path, its file name, or its sub-package (`cli/`).
        names = {f"`{module.as_posix()}`", f"`{module.name}`", f"`{module.parent.as_posix()}/`"}
        if not any(name in page for name in names):
            unnamed.append(module.as_posix())
    assert unnamed == [], "docs/contributing.md does not place these modules"
