"""Where the pinned control-plane binaries are, building them once if they are missing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-controlplane.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "kube-proxy", "helm")


def bin_dir(build: bool = True) -> Path:
    """The cache folder holding the binaries; ``PORTICO_BIN_DIR`` overrides it.

    The build script knows the pins and prints the folder on its last line; when everything is
    cached it returns at once."""
    override = os.environ.get("PORTICO_BIN_DIR")
    if override:
        path = Path(override)
    else:
        if not BUILD_SCRIPT.exists():
            raise RuntimeError(f"{BUILD_SCRIPT} is missing: run the lab from a Portico checkout")
        env = dict(os.environ)
        if not build:
            env["PORTICO_NO_BUILD"] = "1"
        proc = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"building the control plane failed:\n{proc.stderr[-4000:]}")
        path = Path(proc.stdout.strip().splitlines()[-1])
    missing = [b for b in BINARIES if not (path / b).is_file()]
    if missing:
        raise RuntimeError(f"{path} lacks {', '.join(missing)}; run hack/build-controlplane.sh")
    return path
