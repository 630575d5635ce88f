"""Node-agent certificate manager against a real in-process CA (short lifetimes)."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import anyio
import pytest

from mesh.backoff import Backoff
from mesh.identity.errors import CertificateRefusedError
from mesh.identity.spiffe import SpiffeId
from nodeagent.certs import (
    CertificateManager,
    CertificateUnavailableError,
    PodRef,
    renewal_delay,
)
from tests.identity_helpers import InProcessCa, new_ca

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
CART1 = PodRef("shop", "cart-1", "cart")
CART2 = PodRef("shop", "cart-2", "cart")
CART_ID = SpiffeId.for_workload("shop", "cart")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_renewal_at_half_life() -> None:
    nb, na = T0, T0 + dt.timedelta(hours=24)
    steady = Backoff(initial=1, maximum=60, jitter=0)
    assert renewal_delay(nb, na, T0 + dt.timedelta(hours=2), 0, steady) == 10 * 3600
    assert renewal_delay(nb, na, T0 + dt.timedelta(hours=13), 0, steady) == 0


def test_backoff_grows_and_is_capped() -> None:
    nb, na = T0, T0 + dt.timedelta(hours=24)
    now = T0 + dt.timedelta(hours=12)
    steady = Backoff(initial=1, maximum=60, jitter=0)
    delays = [renewal_delay(nb, na, now, f, steady) for f in range(1, 9)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    # close to expiry, never wait more than a quarter of what is left
    late = na - dt.timedelta(seconds=20)
    assert renewal_delay(nb, na, late, 8, steady) == 5
    # jitter only shortens (mesh/backoff.py): 1 s less up to half
    jittered = Backoff(initial=1, maximum=60, jitter=0.5, rng=random.Random(1))
    assert 0.5 <= renewal_delay(nb, na, late, 1, jittered) <= 1


@pytest.mark.anyio
async def test_one_cert_per_identity_renewed_at_half_life(tmp_path: Path) -> None:
    source = InProcessCa(new_ca(tmp_path), {("shop", "cart-1"): "cart", ("shop", "cart-2"):
                                            "cart"})
    async with CertificateManager(source, "cluster.local",
                                  validity=dt.timedelta(seconds=2)) as certs:
        first = await certs.add_pod(CART1)
        assert await certs.add_pod(CART2) is first  # same service account: same cert
        assert source.calls == 1 and first.identity == CART_ID
        ctx_before = certs.client_tls(CART_ID).client_context()
        await anyio.sleep(1.3)
        renewed = certs.material(CART_ID).certified_key
        assert renewed.serial != first.serial
        assert certs.client_tls(CART_ID).client_context() is not ctx_before
        assert certs.renewals >= 1
        certs.remove_pod(CART1)
        assert certs.material(CART_ID)  # cart-2 still uses it
        certs.remove_pod(CART2)
        with pytest.raises(CertificateUnavailableError):
            certs.material(CART_ID)


@pytest.mark.anyio
async def test_kept_while_valid_when_ca_down_then_recovers(tmp_path: Path) -> None:
    source = InProcessCa(new_ca(tmp_path), {("shop", "cart-1"): "cart"})
    async with CertificateManager(source, "cluster.local", validity=dt.timedelta(seconds=3),
                                  min_backoff=0.2, max_backoff=0.4) as certs:
        first = await certs.add_pod(CART1)
        source.down = True
        await anyio.sleep(2.0)  # past half-life: renewals fail, the cert is still valid
        assert certs.material(CART_ID).certified_key.serial == first.serial
        assert certs.renewal_failures >= 2
        assert certs.status()[0].failures >= 2
        await anyio.sleep(1.3)  # now expired
        with pytest.raises(CertificateUnavailableError):
            certs.material(CART_ID)
        source.down = False
        await anyio.sleep(0.8)
        assert certs.material(CART_ID).certified_key.serial != first.serial


@pytest.mark.anyio
async def test_refused_pod_raises(tmp_path: Path) -> None:
    source = InProcessCa(new_ca(tmp_path), {})
    async with CertificateManager(source, "cluster.local") as certs:
        with pytest.raises(CertificateRefusedError):
            await certs.add_pod(CART1)
        assert certs.status() == []
