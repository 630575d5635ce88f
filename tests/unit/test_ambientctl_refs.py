"""What users type: pod references and explain destinations."""

from __future__ import annotations

import pytest

from ambientctl.errors import BadArgument
from ambientctl.refs import Destination, parse_destination, parse_pod_ref


@pytest.mark.parametrize(("text", "expected"), [
    ("catalog", Destination("catalog", None, "/")),
    ("catalog:80", Destination("catalog", 80, "/")),
    ("catalog.demo/items", Destination("catalog.demo", None, "/items")),
    ("catalog.demo:80/items/1", Destination("catalog.demo", 80, "/items/1")),
    ("demo/catalog:80/items", Destination("demo/catalog", 80, "/items")),
    ("demo/inventory-0", Destination("demo/inventory-0", None, "/")),
    ("10.96.0.3:80/x", Destination("10.96.0.3", 80, "/x")),
    ("[fd00::1]:8080/a", Destination("fd00::1", 8080, "/a")),
    ("http://catalog.demo/items?q=1", Destination("catalog.demo", None, "/items?q=1")),
])
def test_destinations(text: str, expected: Destination) -> None:
    assert parse_destination(text) == expected


def test_destination_ip_property() -> None:
    assert parse_destination("[fd00::1]:80").ip == "fd00::1"
    assert parse_destination("catalog:80").ip is None


@pytest.mark.parametrize("text", ["catalog:8o", "catalog:0", "catalog:70000", "[fd00::1",
                                  ":80", "catalog:80x"])
def test_bad_destinations(text: str) -> None:
    with pytest.raises(BadArgument) as err:
        parse_destination(text)
    assert err.value.exit_code == 2


def test_pod_refs() -> None:
    assert parse_pod_ref("demo/frontend-0") == ("demo", "frontend-0")
    assert parse_pod_ref("sleep") == ("default", "sleep")
    for bad in ("demo/", "/x", "a/b/c"):
        with pytest.raises(BadArgument, match="not a pod reference"):
            parse_pod_ref(bad)
