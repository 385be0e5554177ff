"""What applying a ruleset through libnftables reports, the same for the node agent's table
and the gateway's: the error, one apply's result, and the running counts."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ApplyResult", "NftError", "Stats"]


class NftError(RuntimeError):
    pass


@dataclass
class ApplyResult:
    commands: int  # commands in the transaction (0: nothing to change)
    seconds: float  # diff and transaction
    mode: str  # "none", "incremental", "replace"
    transaction_seconds: float = 0.0  # of which in libnftables and the kernel


@dataclass
class Stats:
    applies: int = 0
    errors: int = 0
    restores: int = 0
    last_seconds: float = 0.0
    last_commands: int = 0
    last_error: str = ""
    counts: dict[str, int] = field(default_factory=dict)
