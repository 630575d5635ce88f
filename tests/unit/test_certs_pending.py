"""Pods whose first certificate cannot be had (CA down): they are reported, and
retried later with success; never left stuck without a certificate (issue 20 #5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.certs import CertificateManager, obtain_all
from tests.identity_helpers import InProcessCa, new_ca
from tests.unit.test_certs_manager import CART1, CART2, CART_ID


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_concurrent_first_issuance_fails_then_is_retried(tmp_path: Path) -> None:
    source = InProcessCa(new_ca(tmp_path), {("shop", "cart-1"): "cart",
                                            ("shop", "cart-2"): "cart"})
    async with CertificateManager(source, "cluster.local") as certs:
        source.down = True
        failed = await obtain_all(certs, [CART1, CART2])
        assert set(failed) == {CART1, CART2}
        why = certs.certificate_error(CART_ID)
        assert why is not None and str(CART_ID) in why
        source.down = False
        # The failed attempt left nothing behind that blocks the retry (a state kept
        # with no certificate and no renewal loop answered "not issued" forever).
        assert await obtain_all(certs, [CART1, CART2]) == {}
        assert certs.certificate_error(CART_ID) is None
