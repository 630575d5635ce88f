import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.identity.errors import InvalidSpiffeIdError
from mesh.identity.spiffe import SpiffeId

segment = st.text(alphabet="abcXYZ019.-_", min_size=1, max_size=30).filter(
    lambda s: s not in (".", ".."))


def test_parse_and_format_roundtrip() -> None:
    sid = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/bookinfo-ratings")
    assert sid == SpiffeId("cluster.local", "default", "bookinfo-ratings")
    assert str(sid) == "spiffe://cluster.local/ns/default/sa/bookinfo-ratings"


def test_for_workload_defaults() -> None:
    assert SpiffeId.for_workload("web", "").uri == "spiffe://cluster.local/ns/web/sa/default"


@given(td=st.text(alphabet="abc019.-_", min_size=1, max_size=40), ns=segment, sa=segment)
def test_roundtrip_property(td: str, ns: str, sa: str) -> None:
    sid = SpiffeId(td, ns, sa)
    assert SpiffeId.parse(str(sid)) == sid


@pytest.mark.parametrize("bad", [
    "http://cluster.local/ns/a/sa/b",
    "SPIFFE://cluster.local/ns/a/sa/b",
    "spiffe://Cluster.local/ns/a/sa/b",
    "spiffe://cluster.local",
    "spiffe://cluster.local/",
    "spiffe://cluster.local/ns/a",
    "spiffe://cluster.local/ns/a/sa/",
    "spiffe://cluster.local/ns//sa/b",
    "spiffe://cluster.local/ns/a/sa/b/extra",
    "spiffe://cluster.local/ns/../sa/b",
    "spiffe://cluster.local/ns/a/sa/b?x=1",
    "spiffe://cluster.local/ns/a%20b/sa/b",
    "spiffe://cluster.local/sa/a/ns/b",
    "spiffe:///ns/a/sa/b",
    "spiffe://user@host/ns/a/sa/b",
    "spiffe://host:8080/ns/a/sa/b",
])
def test_rejects_malformed(bad: str) -> None:
    with pytest.raises(InvalidSpiffeIdError):
        SpiffeId.parse(bad)


def test_error_message_is_actionable() -> None:
    with pytest.raises(InvalidSpiffeIdError, match=r"/ns/<namespace>/sa/<service-account>"):
        SpiffeId.parse("spiffe://cluster.local/foo/bar")
