"""Command-line flags that can also be given as environment variables.

Every long flag of Portico's programs (operator, node agent, gateway) can be given as an
environment variable too: `--metrics-port` is `PORTICO_METRICS_PORT`. Containers and systemd
units (EnvironmentFile=) configure programs that way. :class:`EnvArgumentParser` is an
``argparse.ArgumentParser`` that reads them:

* the flag wins over the variable, the variable over the flag's default (which may itself come
  from an ecosystem variable such as ``$NODE_NAME`` or ``$KUBECONFIG``: those keep working);
* a variable goes through the flag's own type and choices; a bad value stops the program at
  start with a message that names the variable (exit status 2, as a bad flag);
* an empty variable counts as unset (``PORTICO_ZONE=`` in an env file changes nothing);
* switches (``store_true``) take ``true``/``false`` (also 1/0, yes/no, on/off); repeatable
  flags (``append``) take a comma-separated list, which one flag on the command line replaces;
* two variables of mutually exclusive flags are an error, and a flag of such a group given on
  the command line sets aside the variables of the others;
* ``--help`` shows each flag's variable: ``[env PORTICO_METRICS_PORT]``.

Pure: the environment is a mapping handed in (``os.environ`` unless told otherwise).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ENV_PREFIX = "PORTICO_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
# What the kubelet injects for a Service in the pod's namespace ("service links"): a Service
# named portico-metrics gives every pod there PORTICO_METRICS_PORT=tcp://10.96.0.5:9464.
_SERVICE_LINK = re.compile(r"^(tcp|udp|sctp)://", re.IGNORECASE)


def env_var_for(option: str) -> str:
    """`--node-health-port` -> `PORTICO_NODE_HEALTH_PORT`."""
    if not option.startswith("--") or len(option) < 3:
        raise ValueError(f"not a long option: {option!r}")
    return ENV_PREFIX + option[2:].replace("-", "_").upper()


class EnvValueError(ValueError):
    """A variable whose value its flag does not take; the message names the variable."""


# How a flag reads a variable: one value, a switch (set to its const, or left), a list.
_VALUE, _SWITCH, _LIST, _COUNT = "value", "switch", "list", "count"


def _kind(action: argparse.Action) -> str | None:
    """How ``action`` takes a variable, or None when it takes none (--help, --version)."""
    if isinstance(action, argparse._HelpAction | argparse._VersionAction):
        return None
    if isinstance(action, argparse.BooleanOptionalAction):
        return _SWITCH
    if isinstance(action, argparse._StoreConstAction | argparse._AppendConstAction):
        # store_true and store_false are store_const; append_const: the const, once.
        return _SWITCH
    if isinstance(action, argparse._CountAction):
        return _COUNT
    if isinstance(action, argparse._AppendAction):  # append and extend
        return _LIST if action.nargs is None or isinstance(action, argparse._ExtendAction) else None
    if isinstance(action, argparse._StoreAction):
        if action.nargs in (None, argparse.OPTIONAL):
            return _VALUE
        if action.nargs in (argparse.ZERO_OR_MORE, argparse.ONE_OR_MORE):
            return _LIST
    return None


def env_vars_of(action: argparse.Action) -> list[str]:
    """The variables that stand for ``action``: one per long option string, none for a flag
    that takes no variable (help, version) or has no long option."""
    if _kind(action) is None:
        return []
    return [env_var_for(o) for o in action.option_strings if o.startswith("--") and len(o) > 2]


def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _hint(raw: str) -> str:
    if _SERVICE_LINK.match(raw):
        return (
            " (this looks like a Kubernetes service link: a Service in the pod's namespace "
            "whose name makes this variable; set enableServiceLinks: false in the pod)"
        )
    return ""


Converter = Callable[[argparse.Action, str], Any]


def value_from_env(action: argparse.Action, var: str, raw: str, convert: Converter) -> Any:
    """What ``action`` holds when variable ``var`` is ``raw`` (and its flag is not given).
    ``convert(action, text)`` is the flag's own conversion (type and choices); it raises
    ``ValueError`` with the reason. Raises :class:`EnvValueError` naming ``var``."""
    kind = _kind(action)
    try:
        if kind == _SWITCH:
            on = parse_bool(raw)
            if isinstance(action, argparse.BooleanOptionalAction):
                return on
            if isinstance(action, argparse._AppendConstAction):
                return [action.const] if on else action.default
            return action.const if on else action.default
        if kind == _COUNT:
            count = int(raw)
            if count < 0:
                raise ValueError(f"a count, got {raw!r}")
            return count
        if kind == _LIST:
            items = [item.strip() for item in raw.split(",")]
            if any(not item for item in items):
                raise ValueError(f"expected a comma-separated list, got {raw!r}")
            return [convert(action, item) for item in items]
        if kind == _VALUE:
            return convert(action, raw)
    except ValueError as e:
        raise EnvValueError(f"environment variable {var}={raw!r}: {e}{_hint(raw)}") from None
    raise EnvValueError(f"environment variable {var}: its flag takes no value from the environment")


@dataclass(frozen=True)
class _FromEnv:
    var: str
    value: Any


_NOT_GIVEN = object()  # a flag the command line did not give (lists: None)


class EnvArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose every long flag can be given as ``PORTICO_<FLAG>`` (see the
    module docstring). ``environ`` is read at each parse; ``os.environ`` when None."""

    def __init__(self, *args: Any, environ: Mapping[str, str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.environ = environ
        self._annotated: set[int] = set()
        # Flags that are required on the command line unless their variable is set: argparse
        # is told they are optional, and the check is made here after the variables.
        self._required: list[argparse.Action] = []
        self._required_groups: list[Any] = []

    # -- help --------------------------------------------------------------------------------
    def _annotate(self) -> None:
        """Adds each flag's variable to its help, and takes over the required checks; once per
        flag (flags are added after the parser is made, so this runs at parse and help)."""
        for action in self._actions:
            if id(action) in self._annotated:
                continue
            self._annotated.add(id(action))
            names = env_vars_of(action)
            if not names:
                continue
            if action.help is not argparse.SUPPRESS:
                how = {_LIST: ", comma-separated", _SWITCH: "=true"}.get(_kind(action) or "", "")
                tag = f"[env {' or '.join(names)}{how}]"
                action.help = f"{action.help} {tag}" if action.help else tag
            if action.required:
                action.required = False
                self._required.append(action)
        for group in self._mutually_exclusive_groups:
            if group.required and any(env_vars_of(a) for a in group._group_actions):
                group.required = False
                self._required_groups.append(group)

    def format_help(self) -> str:
        self._annotate()
        return super().format_help()

    def format_usage(self) -> str:
        self._annotate()
        return super().format_usage()

    # -- parsing -----------------------------------------------------------------------------
    def _convert(self, action: argparse.Action, text: str) -> Any:
        type_func = self._registry_get("type", action.type, action.type)
        if not callable(type_func):
            raise ValueError(f"{type_func!r} is not callable")
        try:
            value = type_func(text)
        except argparse.ArgumentTypeError as e:
            raise ValueError(str(e)) from None
        except (TypeError, ValueError):
            name = getattr(action.type, "__name__", repr(action.type))
            raise ValueError(f"invalid {name} value") from None
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(repr, action.choices))
            raise ValueError(f"invalid choice (choose from {choices})")
        return value

    def _from_env(self, environ: Mapping[str, str]) -> tuple[dict[str, _FromEnv], list[str]]:
        """dest -> the value its variable gives, for every variable set and not empty; and what
        is wrong with the others (reported after the command line, so that --help still
        answers with a broken environment)."""
        found: dict[str, _FromEnv] = {}
        errors: list[str] = []
        for action in self._actions:
            for var in env_vars_of(action):
                raw = environ.get(var, "")
                if not raw.strip():
                    continue
                try:
                    value = value_from_env(action, var, raw, self._convert)
                except EnvValueError as e:
                    errors.append(str(e))
                    continue
                if action.dest in found and found[action.dest].var != var:
                    errors.append(f"set only one of {found[action.dest].var} and {var}")
                found[action.dest] = _FromEnv(var, value)
        return found, errors

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._annotate()
        from_env, errors = self._from_env(os.environ if self.environ is None else self.environ)
        # Which flags the command line gives: a marker in the namespace, which argparse keeps
        # (it fills in a default only where the namespace has nothing) and a flag replaces.
        ns = argparse.Namespace() if namespace is None else namespace
        marked: dict[str, argparse.Action] = {}
        for action in self._actions:
            if env_vars_of(action) and not hasattr(ns, action.dest):
                # A flag that adds to what is there starts from None (argparse's own start).
                setattr(ns, action.dest, None if _accumulates(action) else _NOT_GIVEN)
                marked.setdefault(action.dest, action)
        ns, extras = super().parse_known_args(args, ns)
        if errors:
            self.error(errors[0])
        given = {d for d, a in marked.items() if not _unset(a, getattr(ns, d, _NOT_GIVEN))}

        for group in self._mutually_exclusive_groups:
            dests = [a.dest for a in group._group_actions]
            if any(d in given for d in dests):
                for d in dests:
                    from_env.pop(d, None)
                continue
            set_by_env = [from_env[d].var for d in dests if d in from_env]
            if len(set_by_env) > 1:
                self.error(
                    f"{' and '.join(set_by_env)} cannot be set together "
                    "(their flags exclude each other)"
                )

        for dest, action in marked.items():
            if dest in given:
                continue
            if dest in from_env:
                setattr(ns, dest, from_env[dest].value)
            elif action.default is argparse.SUPPRESS:
                delattr(ns, dest)
            elif isinstance(action.default, str) and _kind(action) == _VALUE:
                setattr(ns, dest, self._get_value(action, action.default))
            else:
                setattr(ns, dest, action.default)

        missing = [a for a in self._required if a.dest not in given and a.dest not in from_env]
        if missing:
            names = ", ".join(f"{a.option_strings[0]} (or {env_vars_of(a)[0]})" for a in missing)
            self.error(f"the following arguments are required: {names}")
        for group in self._required_groups:
            members = {a.dest for a in group._group_actions}
            if not members & (given | set(from_env)):
                flags = " ".join(a.option_strings[0] for a in group._group_actions)
                self.error(f"one of the arguments {flags} (or their variables) is required")
        return ns, extras


def _accumulates(action: argparse.Action) -> bool:
    """Whether each use of the flag adds to its value (append, extend, count, append_const)."""
    return _kind(action) in (_LIST, _COUNT) or isinstance(action, argparse._AppendConstAction)


def _unset(action: argparse.Action, value: Any) -> bool:
    return value is _NOT_GIVEN or (_accumulates(action) and value is None)
