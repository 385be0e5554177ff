from __future__ import annotations

import pytest

from .product import Wheel, build_product_wheel


@pytest.fixture(scope="session")
def product_wheel(tmp_path_factory: pytest.TempPathFactory) -> Wheel:
    return build_product_wheel(tmp_path_factory.mktemp("product-wheel"))
