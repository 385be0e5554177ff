"""The product wheel in a new virtualenv of Debian's python3, as images/Dockerfile installs it:
its dependencies from the package index, libnftables' binding from the distribution
(python3-nftables, which pip cannot bring: linked in as hack/install.sh and the image do), and
its programs start. Needs root for the network namespaces of the nftables checks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .product import PRODUCT_SCRIPTS, Wheel

DEBIAN_PYTHON = Path("/usr/bin/python3")
DIST_NFTABLES = Path("/usr/lib/python3/dist-packages/nftables")
# Nothing of the work tree on the path: the virtualenv alone must provide the product.
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def run(*argv: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], env=ENV, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def venv(product_wheel: Wheel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("product-venv") / "venv"
    subprocess.run([DEBIAN_PYTHON, "-m", "venv", venv], env=ENV, check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(product_wheel.path)]
    subprocess.run(pip, env=ENV, check=True, timeout=300)
    site = run(
        venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    )
    (Path(site.stdout.strip()) / "nftables").symlink_to(DIST_NFTABLES)
    return venv


def installed(venv: Path) -> set[str]:
    listing = (
        "import importlib.metadata as m\nfor d in m.distributions(): print(d.metadata['Name'])"
    )
    names = run(venv / "bin" / "python", "-c", listing)
    return {n.lower() for n in names.stdout.split()}


def test_no_lab_and_no_test_tool_is_installed(venv: Path) -> None:
    names = installed(venv)
    assert "portico" in names
    assert not names & {"portico-lab", "scapy", "pytest", "hypothesis", "cryptography"}
    assert run(venv / "bin" / "python", "-c", "import portico_lab").returncode != 0


@pytest.mark.parametrize("script", sorted(PRODUCT_SCRIPTS))
def test_each_program_starts(venv: Path, script: str) -> None:
    result = run(venv / "bin" / script, "--help")
    assert result.returncode == 0, result.stderr
    # kubectl runs kubectl-portico as `kubectl portico`, and its usage says so.
    name = "kubectl portico" if script == "kubectl-portico" else script
    assert result.stdout.startswith(f"usage: {name} ")
    if script != "kubectl-portico":  # the programs' flags are also PORTICO_ variables
        assert "[env PORTICO_LOG_LEVEL]" in result.stdout


@pytest.mark.parametrize("script", ["portico-node-agent", "portico-lbnode"])
def test_the_nftables_binding_works_from_the_virtualenv(venv: Path, script: str) -> None:
    # --cleanup deletes the program's tables through libnftables; in a new, empty network
    # namespace there is nothing to delete and nothing else to touch.
    result = run("unshare", "--net", venv / "bin" / script, "--cleanup")
    assert result.returncode == 0, result.stderr
    assert "removed table" in result.stderr + result.stdout
