"""`pip install portico` brings the operator, the node agent and the gateway, and only what they
import: the lab (portico_lab, `portico-lab`) and the test tools are not part of the product."""

from __future__ import annotations

from .product import (
    INDIRECT,
    PRODUCT_PACKAGES,
    PRODUCT_SCRIPTS,
    Wheel,
    imported_distributions,
    lab_and_test_requirements,
    requirement_name,
)


def test_the_wheel_holds_the_product_packages_and_no_lab(product_wheel: Wheel) -> None:
    assert product_wheel.top_level == PRODUCT_PACKAGES
    assert not [f for f in product_wheel.files if "portico_lab" in f]


def test_the_wheel_starts_the_programs_and_not_the_lab(product_wheel: Wheel) -> None:
    assert product_wheel.scripts == PRODUCT_SCRIPTS


def test_the_declared_dependencies_are_what_the_product_imports(product_wheel: Wheel) -> None:
    assert not product_wheel.extras, "an extra would carry lab or test packages in the metadata"
    requires = {requirement_name(r) for r in product_wheel.requires}
    needed = imported_distributions()
    lab_or_test_only = lab_and_test_requirements() - needed
    assert not requires & lab_or_test_only, "lab or test packages among the product's"
    assert requires == needed | INDIRECT
