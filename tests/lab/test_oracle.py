"""kube-proxy as the oracle (tests/lab/oracle_harness.py): a sample of the matrix of Service
shapes (every externalTrafficPolicy x endpoints pair with both session affinities, the families
and protocols in turn; every source-range case), each from every client location, once through
Portico's node agents and once through kube-proxy (nftables mode) alone. Every cell must answer
as kube-proxy's own rules do (answered or not, refused or timed out, which pods, the source
address each pod sees), except where ``oracle_harness.INTENDED`` says why Portico differs.
``bench/oracle_matrix.py`` runs the whole matrix.
"""

from __future__ import annotations

import pytest
from portico_lab.lab import Lab

from . import oracle_harness as oracle
from .operator_harness import Api

SHAPES = oracle.sampled()
CELLS = oracle.cells_of(SHAPES)


@pytest.fixture(scope="module")
def verdicts(lab: Lab, api: Api) -> dict[str, oracle.Verdict]:
    run = oracle.run(lab, api, SHAPES, mode="nftables")
    return {v.cell.id: v for v in oracle.compare(run)}


@pytest.mark.parametrize("cell", CELLS, ids=[c.id for c in CELLS])
def test_portico_answers_as_kube_proxy(verdicts: dict[str, oracle.Verdict], cell: oracle.Cell):
    v = verdicts[cell.id]
    if v.status == "defect":
        pytest.fail(
            f"{cell.id}: Portico differs from kube-proxy ({'; '.join(v.why)})\n"
            f"  portico:    {oracle.describe(v.portico)}\n"
            f"  kube-proxy: {oracle.describe(v.kube_proxy)}",
            pytrace=False,
        )


def test_every_documented_difference_is_still_one(verdicts: dict[str, oracle.Verdict]) -> None:
    # A difference that no cell shows any more (Portico now does as kube-proxy) leaves the list.
    seen = {name for v in verdicts.values() if v.status == "intended" for name in v.why}
    assert seen == {d.name for d in oracle.INTENDED}
