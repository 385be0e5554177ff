"""Flags given as environment variables (portico_common.flagenv), on a parser of the test's own
and on the three programs' real parsers."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from portico_common.flagenv import EnvArgumentParser, env_var_for, env_vars_of, parse_bool
from portico_lab.binaries import bin_dir
from portico_lbnode.main import parse_args as gateway_args
from portico_nodeagent.main import parse_args as agent_args
from portico_operator.main import parse_args as operator_args

from ..charts.test_manifests import render


def test_the_variable_of_a_flag() -> None:
    assert env_var_for("--metrics-port") == "PORTICO_METRICS_PORT"
    assert env_var_for("--node-health-port") == "PORTICO_NODE_HEALTH_PORT"
    for bad in ("-m", "--", "metrics-port"):
        with pytest.raises(ValueError):
            env_var_for(bad)


def test_booleans() -> None:
    for word in ("1", "true", "True", "YES", "on", " on "):
        assert parse_bool(word) is True
    for word in ("0", "false", "No", "off"):
        assert parse_bool(word) is False
    with pytest.raises(ValueError):
        parse_bool("maybe")


def parser(environ: Mapping[str, str]) -> EnvArgumentParser:
    p = EnvArgumentParser(prog="demo", environ=environ)
    p.add_argument("--port", type=int, default=9, help="a port")
    p.add_argument("--level", default="info", choices=["info", "debug"])
    p.add_argument("--path", type=Path)
    p.add_argument("--cleanup", action="store_true")
    p.add_argument("--no-probe", dest="probe", action="store_false")
    p.add_argument("--interface", action="append", default=[])
    p.add_argument("--health-port", "--healthz-port", dest="health_port", type=int, default=1)
    p.add_argument("-v", action="count", default=0)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--rules")
    src.add_argument("--input")
    return p


def parse(environ: Mapping[str, str], *argv: str) -> argparse.Namespace:
    return parser(environ).parse_args(list(argv))


def fails(capsys: pytest.CaptureFixture[str], run: Callable[[], Any]) -> str:
    """Runs ``run``, which must stop as argparse stops on a bad flag; its message."""
    with pytest.raises(SystemExit) as stopped:
        run()
    assert stopped.value.code == 2
    return capsys.readouterr().err


def test_without_variables_the_defaults_hold() -> None:
    ns = parse({})
    assert (ns.port, ns.level, ns.path, ns.cleanup, ns.probe) == (9, "info", None, False, True)
    assert (ns.interface, ns.health_port, ns.v, ns.rules, ns.input) == ([], 1, 0, None, None)


def test_a_variable_sets_a_value_through_the_flags_type() -> None:
    ns = parse({"PORTICO_PORT": "9465", "PORTICO_PATH": "/etc/x", "PORTICO_LEVEL": "debug"})
    assert (ns.port, ns.path, ns.level) == (9465, Path("/etc/x"), "debug")


def test_the_flag_wins_over_the_variable() -> None:
    env = {"PORTICO_PORT": "9465", "PORTICO_INTERFACE": "eth0,eth1", "PORTICO_CLEANUP": "false"}
    ns = parse(env, "--port", "1", "--interface", "eth2", "--cleanup")
    assert (ns.port, ns.interface, ns.cleanup) == (1, ["eth2"], True)
    assert parse(env, "--port=2").port == 2


def test_an_empty_variable_is_unset() -> None:
    ns = parse({"PORTICO_PORT": "", "PORTICO_INTERFACE": " ", "PORTICO_CLEANUP": ""})
    assert (ns.port, ns.interface, ns.cleanup) == (9, [], False)


def test_switches_and_counts() -> None:
    ns = parse({"PORTICO_CLEANUP": "true", "PORTICO_NO_PROBE": "yes"})
    assert (ns.cleanup, ns.probe) == (True, False)
    ns = parse({"PORTICO_CLEANUP": "0", "PORTICO_NO_PROBE": "off"})
    assert (ns.cleanup, ns.probe) == (False, True)


def test_a_repeatable_flag_takes_a_comma_separated_list() -> None:
    assert parse({"PORTICO_INTERFACE": "eth0, eth1"}).interface == ["eth0", "eth1"]
    assert parse(
        {"PORTICO_INTERFACE": "eth0"}, "--interface", "a", "--interface", "b"
    ).interface == [
        "a",
        "b",
    ]


def test_an_alias_has_its_variable_too_but_only_one_may_be_set(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert parse({"PORTICO_HEALTHZ_PORT": "7"}).health_port == 7
    assert parse({"PORTICO_HEALTH_PORT": "8"}).health_port == 8
    err = fails(capsys, lambda: parse({"PORTICO_HEALTH_PORT": "8", "PORTICO_HEALTHZ_PORT": "7"}))
    assert "PORTICO_HEALTH_PORT" in err and "PORTICO_HEALTHZ_PORT" in err


@pytest.mark.parametrize(
    ("var", "value", "reason"),
    [
        ("PORTICO_PORT", "abc", "invalid int value"),
        ("PORTICO_LEVEL", "verbose", "invalid choice"),
        ("PORTICO_CLEANUP", "maybe", "expected true or false"),
        ("PORTICO_INTERFACE", "eth0,,eth1", "comma-separated"),
    ],
)
def test_a_bad_value_stops_the_start_naming_the_variable(
    capsys: pytest.CaptureFixture[str], var: str, value: str, reason: str
) -> None:
    err = fails(capsys, lambda: parse({var: value}))
    assert f"environment variable {var}={value!r}" in err and reason in err


def test_a_bad_variable_fails_even_when_its_flag_is_given(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A typo in an env file is found at the first start, not when the flag is dropped."""
    err = fails(capsys, lambda: parse({"PORTICO_PORT": "x"}, "--port", "1"))
    assert "PORTICO_PORT" in err


def test_a_kubernetes_service_link_is_named_as_such(capsys: pytest.CaptureFixture[str]) -> None:
    err = fails(capsys, lambda: parse({"PORTICO_PORT": "tcp://10.96.0.5:9464"}))
    assert "service link" in err and "enableServiceLinks: false" in err


def test_mutually_exclusive_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse({"PORTICO_RULES": "r.json"}).rules == "r.json"
    # The flag of one member sets aside the variable of another.
    ns = parse({"PORTICO_RULES": "r.json"}, "--input", "i.json")
    assert (ns.rules, ns.input) == (None, "i.json")
    err = fails(capsys, lambda: parse({"PORTICO_RULES": "r", "PORTICO_INPUT": "i"}))
    assert "PORTICO_RULES and PORTICO_INPUT cannot be set together" in err


def test_a_required_flag_may_come_from_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    def required(environ: Mapping[str, str], *argv: str) -> argparse.Namespace:
        p = EnvArgumentParser(prog="demo", environ=environ)
        p.add_argument("--name", required=True)
        return p.parse_args(list(argv))

    assert required({"PORTICO_NAME": "gw-1"}).name == "gw-1"
    assert required({"PORTICO_NAME": "gw-1"}, "--name", "gw-2").name == "gw-2"
    err = fails(capsys, lambda: required({}))
    assert "--name (or PORTICO_NAME)" in err


def test_help_shows_each_flags_variable() -> None:
    text = " ".join(parser({}).format_help().split())
    assert "a port [env PORTICO_PORT]" in text
    assert "[env PORTICO_INTERFACE, comma-separated]" in text
    assert "[env PORTICO_CLEANUP=true]" in text
    assert "[env PORTICO_HEALTH_PORT or PORTICO_HEALTHZ_PORT]" in text
    assert "PORTICO_HELP" not in text and "PORTICO_V" not in text
    # Only once, however often the help is made.
    assert parser({}).format_help().count("PORTICO_PORT") == 1
    p = parser({})
    p.format_help()
    assert p.format_help().count("PORTICO_PORT") == 1


def test_the_variables_of_an_action() -> None:
    p = parser({})
    by_dest = {a.dest: env_vars_of(a) for a in p._actions}
    assert by_dest["help"] == [] and by_dest["v"] == []
    assert by_dest["health_port"] == ["PORTICO_HEALTH_PORT", "PORTICO_HEALTHZ_PORT"]


# -- the three programs ------------------------------------------------------------------------
PROGRAMS: dict[str, Callable[[list[str]], Any]] = {
    "portico-operator": operator_args,
    "portico-node-agent": agent_args,
    "portico-lbnode": gateway_args,
}


def help_text(program: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as stopped:
        PROGRAMS[program](["--help"])
    assert stopped.value.code == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_long_flag_of_every_program_names_its_variable(
    program: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_text(program, capsys)
    usage = text.split(" options: ")[0]
    flags = set(re.findall(r"\[(--[a-z][a-z0-9-]*)", usage)) - {"--help"}
    assert len(flags) > 5, usage
    for flag in flags:
        assert re.search(rf"\[env [A-Z_ ]*\b{env_var_for(flag)}\b", text), (program, flag)


def test_the_gateway_takes_its_flags_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTICO_INTERFACE", "eth0,eth1")
    monkeypatch.setenv("PORTICO_METRICS_PORT", "9465")
    monkeypatch.setenv("PORTICO_NAME", "gw-env")
    args = gateway_args([])
    assert (args.interface, args.metrics_port, args.name) == (["eth0", "eth1"], 9465, "gw-env")
    assert gateway_args(["--interface", "lan0", "--name", "gw-flag"]).interface == ["lan0"]


def test_the_gateway_still_needs_an_interface(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PORTICO_INTERFACE", raising=False)
    err = fails(capsys, lambda: gateway_args([]))
    assert "--interface (or PORTICO_INTERFACE) is required" in err


def test_ecosystem_variables_keep_working_below_portico_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NODE_NAME (the DaemonSet's downward API), KUBECONFIG, GATEWAY_NAME, POD_NAMESPACE: the
    flag's default; the PORTICO_ variable overrides it, the flag both."""
    monkeypatch.setenv("NODE_NAME", "node-eco")
    monkeypatch.setenv("KUBECONFIG", "/eco/kubeconfig")
    monkeypatch.setenv("GATEWAY_NAME", "gw-eco")
    monkeypatch.setenv("POD_NAMESPACE", "ns-eco")
    for var in ("PORTICO_NODE_NAME", "PORTICO_KUBECONFIG", "PORTICO_NAME", "PORTICO_NAMESPACE"):
        monkeypatch.delenv(var, raising=False)
    assert agent_args([]).node_name == "node-eco"
    gw = gateway_args(["--interface", "eth0"])
    assert (gw.kubeconfig, gw.name) == ("/eco/kubeconfig", "gw-eco")
    assert operator_args([]).namespace == "ns-eco"

    monkeypatch.setenv("PORTICO_NODE_NAME", "node-portico")
    monkeypatch.setenv("PORTICO_KUBECONFIG", "/portico/kubeconfig")
    monkeypatch.setenv("PORTICO_NAMESPACE", "ns-portico")
    assert agent_args([]).node_name == "node-portico"
    assert agent_args(["--node-name", "node-flag"]).node_name == "node-flag"
    assert gateway_args(["--interface", "eth0"]).kubeconfig == "/portico/kubeconfig"
    assert operator_args([]).namespace == "ns-portico"


def test_the_node_agents_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTICO_NODE_NAME", "node-1")
    monkeypatch.setenv("PORTICO_HEALTHZ_PORT", "10300")  # the old name of --health-port
    monkeypatch.setenv("PORTICO_LOG_LEVEL", "debug")
    monkeypatch.setenv("PORTICO_ONCE", "true")
    settings = agent_args([])
    assert (settings.node_name, settings.health_port) == ("node-1", 10300)
    assert (settings.log_level, settings.once) == ("debug", True)


def chart_helm() -> Path:
    path = bin_dir() / "helm"
    assert path.is_file(), f"{path} is missing: run hack/build-controlplane.sh"
    return path


def test_the_charts_pods_take_no_service_link_variables() -> None:
    """The kubelet gives a pod <SERVICE>_PORT=tcp://... for every Service in its namespace: one
    named portico-metrics (fullnameOverride=portico makes the operator's metrics Service that)
    would stop every program there with a bad PORTICO_METRICS_PORT. The chart turns them off."""
    docs = render(chart_helm(), "--set", "fullnameOverride=portico")
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert "portico-metrics" in services  # the collision the setting is there for
    pods = [d for d in docs if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet")]
    assert {d["kind"] for d in pods} == {"Deployment", "DaemonSet", "StatefulSet"}
    for d in pods:
        assert d["spec"]["template"]["spec"].get("enableServiceLinks") is False, d["kind"]


def test_help_answers_with_a_broken_environment(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        parse({"PORTICO_PORT": "abc"}, "--help")
    assert stopped.value.code == 0
    assert "[env PORTICO_PORT]" in capsys.readouterr().out
