"""images/Dockerfile, read without a container engine (none is on the test machines; hadolint
lints it in `make lint`): a pinned Debian base with its own python3 (for python3-nftables),
only the product's sources, the users and commands each image needs, and names and tags that
match the chart's defaults."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .product import REPO, pyproject

DOCKERFILE = REPO / "images" / "Dockerfile"
BUILD_SCRIPT = REPO / "hack" / "build-images.sh"
CHART = REPO / "charts" / "portico"


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str:
        return [arg for kw, arg in self.instructions if kw == keyword][-1]

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments dropped, continued lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, rest = pending.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    return out


def stages(path: Path = DOCKERFILE) -> dict[str, Stage]:
    result: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, rest in instructions(path):
        if keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            current = Stage(base.strip(), name.strip())
            result[current.name] = current
        else:
            assert current is not None, "an instruction before the first FROM"
            current.instructions.append((keyword, rest))
    return result


def exec_form(argument: str) -> list[str]:
    value = json.loads(argument)
    assert isinstance(value, list)
    return value


def scripts() -> set[str]:
    return set(pyproject()["project"]["scripts"])


def test_every_stage_builds_on_one_pinned_debian_image() -> None:
    by_name = stages()
    external = {s.base for s in by_name.values() if s.base not in by_name}
    assert len(external) == 1, external
    (base,) = external
    # Debian (its python3-nftables), by digest, with the dated tag that names it.
    assert re.fullmatch(r"debian:[a-z]+-\d{8}-slim@sha256:[0-9a-f]{64}", base), base


def test_the_runtime_has_the_distributions_nftables_binding() -> None:
    runtime = stages()["runtime"]
    installs = " ".join(runtime.all("RUN"))
    assert re.search(r"apt-get install [^&]*\bpython3-nftables\b", installs)
    assert "/usr/lib/python3/dist-packages/nftables" in installs
    assert "import nftables" in installs


def test_the_builder_copies_only_the_product() -> None:
    copied: set[str] = set()
    for argument in stages()["builder"].all("COPY"):
        *sources, _destination = argument.split()
        copied |= set(sources)
    product_dirs = set(pyproject()["tool"]["setuptools"]["packages"]["find"]["where"])
    assert copied == product_dirs | {"pyproject.toml", "README.md"}


def test_the_final_stages_run_what_pyproject_installs_as_the_right_user() -> None:
    by_name = stages()
    assert list(by_name)[-1] == "portico", "the default target (the last stage) is the operator's"
    portico, gateway = by_name["portico"], by_name["gateway"]
    assert portico.base == gateway.base == "runtime"
    assert exec_form(portico.last("CMD")) == ["portico-operator"]
    assert exec_form(gateway.last("ENTRYPOINT")) == ["portico-lbnode"]
    assert {"portico-operator", "portico-node-agent", "portico-lbnode"} <= scripts()
    # The operator runs unprivileged, as the user the chart's Deployment names.
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    run_as = re.search(r"runAsUser: (\d+)", deployment)
    assert run_as
    assert portico.last("USER") == f"{run_as.group(1)}:{run_as.group(1)}"
    # The gateway needs NET_ADMIN and NET_RAW, which Kubernetes gives a non-root user no way to use.
    assert gateway.last("USER") == "0:0"


def test_the_built_names_and_tags_are_the_charts_defaults() -> None:
    script = BUILD_SCRIPT.read_text()
    names = dict(re.findall(r'^(\w+_IMAGE)="\$\{\w+:-([^}]+)\}"$', script, re.M))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert names["PORTICO_IMAGE"] == values["image"]["repository"]
    assert chart["appVersion"] == pyproject()["project"]["version"]
    assert "--target portico" in script and "--target gateway" in script
    gateway_image = ((values.get("gateway") or {}).get("image") or {}).get("repository")
    if gateway_image:  # the chart's gateway, once it has one
        assert names["GATEWAY_IMAGE"] == gateway_image
