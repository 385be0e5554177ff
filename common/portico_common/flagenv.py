"""The environment variable that stands for a command-line flag.

Every long flag of Portico's programs (operator, node agent, gateway) can be given as an
environment variable too: `--metrics-port` is `PORTICO_METRICS_PORT`. Containers and systemd
units (EnvironmentFile=) configure programs that way; the flag wins when both are given.
"""

from __future__ import annotations

ENV_PREFIX = "PORTICO_"


def env_var_for(option: str) -> str:
    """`--node-health-port` -> `PORTICO_NODE_HEALTH_PORT`."""
    if not option.startswith("--") or len(option) < 3:
        raise ValueError(f"not a long option: {option!r}")
    return ENV_PREFIX + option[2:].replace("-", "_").upper()
