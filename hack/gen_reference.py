"""Generates the parts of docs/reference.md that the code and the CRDs already say: every CRD
field (from crds/*.yaml) and every flag of the four programs (from their own argparse parsers).

    python hack/gen_reference.py           # rewrite the generated blocks of docs/reference.md
    python hack/gen_reference.py --check   # exit 1 if they are out of date

Only the text between the markers ``<!-- BEGIN GENERATED: name -->`` and
``<!-- END GENERATED: name -->`` is rewritten; the rest of the page is written by hand.
tests/unit/docs/test_reference.py regenerates the blocks in memory and compares.

Run it with the repository's packages importable (the venv's editable install, or PYTHONPATH
set to common:operator:nodeagent:lbnode:kubectl).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "docs" / "reference.md"
CRD_DIR = REPO / "crds"

# (program, module, function that builds or uses the parser, whether it reads PORTICO_* vars)
PROGRAMS = [
    ("portico-operator", "portico_operator.main", "parse_args", True),
    ("portico-node-agent", "portico_nodeagent.main", "parse_args", True),
    ("portico-lbnode", "portico_lbnode.main", "parse_args", True),
    ("kubectl portico", "portico_kubectl.main", "parser", False),
]

# Environment variables the programs read for their defaults (downward API, kubeconfig); they
# are cleared while the parsers are built, so the reference shows the built-in defaults and not
# the machine's.
SCRUBBED_ENV = ("POD_NAMESPACE", "POD_NAME", "NODE_NAME", "GATEWAY_NAME", "KUBECONFIG")
HOSTNAME = "<hostname>"

# What a flag means, for the flags whose parser gives no help text (the parser's own help wins
# as soon as it has one). A note for a flag that no longer exists is an error.
NOTES: dict[tuple[str, str], str] = {
    ("portico-operator", "--lease-seconds"): "how long the leader's Lease holds without a "
    "renewal; a standby takes over when it expires (need 0 < retry < renew deadline < lease)",
    ("portico-operator", "--renew-deadline"): "the leader stops acting once it could not renew "
    "its Lease for this long",
    ("portico-operator", "--retry-seconds"): "seconds between a replica's attempts to take or "
    "renew the Lease",
    ("portico-operator", "--workers"): "Services reconciled at once",
    ("portico-operator", "--log-level"): "debug, info, warning or error",
    ("portico-lbnode", "--kubeconfig"): "credentials (default: $KUBECONFIG, else in-cluster)",
    ("portico-lbnode", "--name"): "this gateway's name: its GatewayReport, the CRs' ownerGateway, "
    "its field manager portico-lbnode-NAME (default: $GATEWAY_NAME, else the hostname)",
    ("portico-lbnode", "--probe-interval"): "seconds between health probes of each node",
    ("portico-lbnode", "--probe-timeout"): "seconds a probe waits for its answer",
    ("portico-lbnode", "--rise"): "good answers in a row that bring a node back",
    ("portico-lbnode", "--fall"): "timeouts in a row that take a node out (a definite no, such "
    "as a 503, takes it out at once)",
    ("portico-lbnode", "--verify-interval"): "seconds between checks that the gateway's nftables "
    "tables are as applied (restored if not)",
    ("portico-lbnode", "--log-level"): "debug, info, warning or error",
}

BEGIN = "<!-- BEGIN GENERATED: {} -->"
END = "<!-- END GENERATED: {} -->"


# ---- CRDs ----


def _cell(text: Any) -> str:
    """One table cell: a single line, pipes escaped."""
    return re.sub(r"\s+", " ", str(text)).strip().replace("|", "\\|")


def _is_condition_list(schema: Mapping[str, Any]) -> bool:
    props = (schema.get("items") or {}).get("properties") or {}
    return {"type", "status", "reason", "lastTransitionTime"} <= set(props)


def _is_label_selector(schema: Mapping[str, Any]) -> bool:
    return {"matchLabels", "matchExpressions"} <= set(schema.get("properties") or {})


def _type(schema: Mapping[str, Any]) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = schema.get("type", "")
    if kind == "array":
        if _is_condition_list(schema):
            return "[]Condition"
        return "[]" + _type(schema.get("items") or {})
    if kind == "object":
        if _is_label_selector(schema):
            return "LabelSelector"
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            return f"map[string]{_type(extra)}"
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return "object (any fields)"
        return "object"
    fmt = schema.get("format")
    return f"{kind} ({fmt})" if fmt else str(kind)


def _constraints(schema: Mapping[str, Any], required: bool) -> str:
    out = []
    if required:
        out.append("required")
    if "enum" in schema:
        out.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if lo is not None and hi is not None:
        out.append(f"{lo} to {hi}")
    elif lo is not None:
        out.append(f"at least {lo}")
    elif hi is not None:
        out.append(f"at most {hi}")
    for key, words in (
        ("minItems", "at least {} items"),
        ("maxItems", "at most {} items"),
        ("minLength", "at least {} characters"),
        ("maxLength", "at most {} characters"),
    ):
        if key in schema:
            out.append(words.format(schema[key]))
    if "pattern" in schema:
        out.append(f"pattern `{schema['pattern']}`")
    for rule in schema.get("x-kubernetes-validations") or []:
        out.append(f"CEL `{rule.get('rule', '')}`: {rule.get('message', '')}".rstrip(": "))
    items = schema.get("items") or {}
    if schema.get("type") == "array" and not _is_condition_list(schema):
        inner = _constraints(items, False)
        if inner:
            out.append(f"each item: {inner}")
    return "; ".join(out)


def _fields(
    schema: Mapping[str, Any], path: str, required: bool = False
) -> Iterator[tuple[str, str, str, str, str]]:
    """(path, type, default, constraints, description) for a field and everything under it."""
    default = ""
    if "default" in schema:
        shown = yaml.safe_dump(schema["default"], default_flow_style=True).strip()
        default = f"`{shown.removesuffix('...').strip()}`"
    yield (
        f"`{path}`",
        _type(schema),
        default,
        _constraints(schema, required),
        schema.get("description", ""),
    )
    if _type(schema) in ("[]Condition", "LabelSelector"):
        return
    node = schema
    suffix = ""
    while node.get("type") == "array":
        node, suffix = node.get("items") or {}, suffix + "[]"
    needed = set(node.get("required") or [])
    for name, sub in (node.get("properties") or {}).items():
        yield from _fields(sub, f"{path}{suffix}.{name}", name in needed)


def render_crd(crd: Mapping[str, Any]) -> str:
    spec = crd["spec"]
    names = spec["names"]
    lines = [f"### {names['kind']} (`{crd['metadata']['name']}`)", ""]
    short = ", ".join(f"`{s}`" for s in names.get("shortNames") or []) or "none"
    cats = ", ".join(f"`{c}`" for c in names.get("categories") or []) or "none"
    for version in spec["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        if schema.get("description"):
            lines += [_cell(schema["description"]), ""]
        lines += [
            f"`{spec['group']}/{version['name']}`, {spec['scope'].lower()}; plural "
            f"`{names['plural']}`, singular `{names.get('singular', '')}`, short names {short}, "
            f"categories {cats}"
            + ("; status subresource" if "status" in (version.get("subresources") or {}) else "")
            + ".",
            "",
        ]
        columns = version.get("additionalPrinterColumns") or []
        if columns:
            lines += [
                "`kubectl get` columns (priority 1: only with `-o wide`):",
                "",
                "| column | type | from |",
                "| --- | --- | --- |",
            ]
            for c in columns:
                wide = " (priority 1)" if c.get("priority") else ""
                lines.append(f"| {c['name']}{wide} | {c['type']} | `{_cell(c['jsonPath'])}` |")
            lines.append("")
        lines += [
            "| field | type | default | constraints | description |",
            "| --- | --- | --- | --- | --- |",
        ]
        top = set(schema.get("required") or [])
        for part in ("spec", "status"):
            if part in (schema.get("properties") or {}):
                for row in _fields(schema["properties"][part], part, part in top):
                    lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
        lines.append("")
    return "\n".join(lines)


def render_crds(crd_dir: Path = CRD_DIR) -> str:
    docs = []
    for path in sorted(crd_dir.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                docs.append((doc["spec"]["names"]["kind"], doc, path))
    out = [
        "Generated from " + ", ".join(f"`{p.relative_to(REPO)}`" for _, _, p in docs) + ".",
        "`[]Condition` is a list of `metav1.Condition` (`type`, `status`, `reason`, `message`, "
        "`lastTransitionTime`, `observedGeneration`; the types and reasons are listed under "
        "[Conditions](#conditions-and-reasons)); `LabelSelector` is a `metav1.LabelSelector` "
        "(`matchLabels`, `matchExpressions` with `In`, `NotIn`, `Exists`, `DoesNotExist`).",
        "",
    ]
    for _, doc, _ in sorted(docs, key=lambda d: d[0]):
        out.append(render_crd(doc))
    return "\n".join(out).rstrip() + "\n"


# ---- flags ----


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__("parser captured")
        self.parser = parser


@contextlib.contextmanager
def _plain_environment() -> Iterator[None]:
    """Defaults as a fresh host would give them: no downward-API variables, no PORTICO_*, a
    placeholder hostname."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in SCRUBBED_ENV and not k.startswith("PORTICO_")
    }
    with (
        mock.patch.dict(os.environ, env, clear=True),
        mock.patch.object(socket, "gethostname", lambda: HOSTNAME),
    ):
        yield


def parser_of(module: str, function: str) -> argparse.ArgumentParser:
    """The program's own parser: from a ``build_parser()`` when the module has one, else from
    the named function: one that returns a parser, or one that builds and uses it (parse_args),
    which is stopped at its first parse."""
    mod = importlib.import_module(module)
    make: Callable[..., Any] = getattr(mod, "build_parser", None) or getattr(mod, function)

    def grab(self: argparse.ArgumentParser, *_a: Any, **_k: Any) -> Any:
        raise _Captured(self)

    with (
        _plain_environment(),
        mock.patch.object(argparse.ArgumentParser, "parse_known_args", grab),
    ):
        try:
            built = make() if make.__name__ in ("build_parser", "parser") else make([])
        except _Captured as c:
            return c.parser
    if not isinstance(built, argparse.ArgumentParser):
        raise TypeError(f"{module}.{make.__name__} gave no parser")
    return built


def _default(action: argparse.Action) -> str:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "off" if action.default is False else "on"
    if action.default is None or action.default == [] or action.default == "":
        return ""
    return f"`{action.default}`"


def _help(parser: argparse.ArgumentParser, action: argparse.Action, program: str) -> str:
    text = action.help or ""
    if not text and action.option_strings:
        text = NOTES.get((program, action.option_strings[0]), "")
    if "%" in text:
        text = parser._get_formatter()._expand_help(action)
    if action.choices:
        text = (text + "; " if text else "") + "one of " + ", ".join(map(str, action.choices))
    return text


def _flag_rows(
    parser: argparse.ArgumentParser, program: str, with_env: bool, command: str = ""
) -> Iterator[str]:
    from portico_common.flagenv import env_var_for

    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _flag_rows(sub, program, with_env, f"{command} {name}".strip())
            continue
        if action.option_strings:
            flag = ", ".join(f"`{o}`" for o in action.option_strings)
            longs = [o for o in action.option_strings if o.startswith("--")]
            env = f"`{env_var_for(longs[0])}`" if with_env and longs else ""
        else:
            name = action.metavar if isinstance(action.metavar, str) else action.dest
            flag, env = f"`{name.upper()}` (argument)", ""
        cells = [
            flag,
            *([env] if with_env else []),
            _default(action),
            _help(parser, action, program),
        ]
        if command:
            cells.insert(0, f"`{command}`")
        yield "| " + " | ".join(_cell(c) for c in cells) + " |"


def _options(parser: argparse.ArgumentParser) -> set[str]:
    found = {o for a in parser._actions for o in a.option_strings}
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub in a.choices.values():
                found |= _options(sub)
    return found


def render_flags() -> str:
    out = []
    parsers = {prog: parser_of(mod, fn) for prog, mod, fn, _ in PROGRAMS}
    for program, flag in NOTES:
        if flag not in _options(parsers[program]):
            raise ValueError(f"hack/gen_reference.py has a note for {program} {flag}: gone")
    for program, _module, _function, with_env in PROGRAMS:
        parser = parsers[program]
        sub = any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
        head = ["flag", "environment variable", "default", "meaning"]
        if sub:
            head.insert(0, "command")
        if not with_env:
            head.remove("environment variable")
        out += [f"### `{program}`", ""]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + " --- |" * len(head))
        out += list(_flag_rows(parser, program, with_env))
        out.append("")
    return "\n".join(out).rstrip() + "\n"


# ---- the page ----

GENERATORS: dict[str, Callable[[], str]] = {"crds": render_crds, "flags": render_flags}


def regenerate(text: str) -> str:
    """``text`` with every generated block rewritten."""
    for name, make in GENERATORS.items():
        begin, end = BEGIN.format(name), END.format(name)
        head, sep, rest = text.partition(begin)
        if not sep:
            raise ValueError(f"docs/reference.md has no {begin}")
        _, sep, tail = rest.partition(end)
        if not sep:
            raise ValueError(f"docs/reference.md has no {end}")
        text = f"{head}{begin}\n\n{make()}\n{end}{tail}"
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the page is out of date")
    args = ap.parse_args(argv)
    current = REFERENCE.read_text()
    fresh = regenerate(current)
    if args.check:
        if fresh != current:
            print(f"{REFERENCE.relative_to(REPO)} is out of date: run python hack/gen_reference.py")
            return 1
        return 0
    if fresh != current:
        REFERENCE.write_text(fresh)
        print(f"rewrote {REFERENCE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
