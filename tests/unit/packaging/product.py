"""What the packaging tests share: the repository's two pyproject files, the product's own
imports, and the product wheel built once per session from a copy of the work tree."""

from __future__ import annotations

import ast
import configparser
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
# Where each of the product's packages lives (the root pyproject's packages.find).
PRODUCT_DIRS = ("common", "operator", "nodeagent", "lbnode", "kubectl")
PRODUCT_PACKAGES = {
    "portico_common",
    "portico_operator",
    "portico_nodeagent",
    "portico_lbnode",
    "portico_kubectl",
}
PRODUCT_SCRIPTS = {"portico-operator", "portico-node-agent", "portico-lbnode", "kubectl-portico"}
# Imported by the product but brought by the distribution (python3-nftables), not by pip.
FROM_THE_DISTRIBUTION = {"nftables"}
# Declared though the product never imports them itself, each for a reason in pyproject.toml.
INDIRECT = {"sniffio"}
# The work tree's files a build must not see (caches, virtualenvs, earlier builds).
IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", ".*_cache", ".hypothesis"
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, requirement
    return canonical(match.group(1))


def pyproject(path: Path = REPO / "pyproject.toml") -> dict[str, Any]:
    with path.open("rb") as f:
        return tomllib.load(f)


def lab_and_test_requirements() -> set[str]:
    """Every distribution the lab, the tests or the linters ask for."""
    root, lab = pyproject(), pyproject(REPO / "lab" / "pyproject.toml")
    names = {requirement_name(r) for r in lab["project"]["dependencies"]}
    for group in root.get("dependency-groups", {}).values():
        names |= {requirement_name(r) for r in group if isinstance(r, str)}
    return names


def imported_top_level_modules() -> set[str]:
    """The top-level modules the product's own code imports (absolute imports only)."""
    modules: set[str] = set()
    for folder in PRODUCT_DIRS:
        for source in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(source.read_text(), str(source))):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - PRODUCT_PACKAGES


def imported_distributions() -> set[str]:
    """The distributions that provide the product's imports, as installed for the tests."""
    providers = metadata.packages_distributions()
    names: set[str] = set()
    for module in imported_top_level_modules() - FROM_THE_DISTRIBUTION:
        assert module in providers, (
            f"the product imports {module}, which nothing installed provides"
        )
        names |= {canonical(d) for d in providers[module]}
    return names


@dataclass(frozen=True)
class Wheel:
    path: Path
    files: list[str]
    metadata_text: str
    entry_points_text: str

    @property
    def top_level(self) -> set[str]:
        return {f.split("/")[0] for f in self.files if not f.split("/")[0].endswith(".dist-info")}

    @property
    def requires(self) -> list[str]:
        return Parser().parsestr(self.metadata_text).get_all("Requires-Dist") or []

    @property
    def extras(self) -> list[str]:
        return Parser().parsestr(self.metadata_text).get_all("Provides-Extra") or []

    @property
    def scripts(self) -> set[str]:
        parser = configparser.ConfigParser()
        parser.read_string(self.entry_points_text)
        return set(parser["console_scripts"]) if parser.has_section("console_scripts") else set()


def build_product_wheel(workdir: Path) -> Wheel:
    """`pip wheel --no-deps` of the root pyproject, from a copy of the work tree (a build writes
    build/ and *.egg-info next to the sources)."""
    tree = workdir / "tree"
    shutil.copytree(REPO, tree, ignore=IGNORED, symlinks=True)
    out = workdir / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(out), "."],
        cwd=tree,
        check=True,
        timeout=300,
    )
    (path,) = out.glob("portico-*.whl")
    with zipfile.ZipFile(path) as z:
        files = z.namelist()
        dist_info = next(f.split("/")[0] for f in files if f.endswith(".dist-info/METADATA"))
        meta = z.read(f"{dist_info}/METADATA").decode()
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
    return Wheel(path, files, meta, entry_points)
