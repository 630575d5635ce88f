"""The CA as the controller runs it: the identity package's CertificateAuthority, plus
a record of the latest certificate issued per identity so status can show what was
issued and when it expires (the CA itself keeps no such list)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from mesh.identity.ca import CertificateAuthority, IssuedCertificate
from mesh.identity.spiffe import SpiffeId


@dataclass(frozen=True)
class IssuedRecord:
    identity: str
    serial: str
    not_after: dt.datetime
    issued_at: dt.datetime

    def as_dict(self) -> dict[str, Any]:
        return {"identity": self.identity, "serial": self.serial,
                "notAfter": self.not_after.isoformat(), "issuedAt": self.issued_at.isoformat()}


class RecordingCertificateAuthority(CertificateAuthority):
    issued_log: dict[str, IssuedRecord]

    def issue(self, csr_pem: bytes, identity: SpiffeId,
              ttl: dt.timedelta | None = None) -> IssuedCertificate:
        issued = super().issue(csr_pem, identity, ttl)
        if not hasattr(self, "issued_log"):
            self.issued_log = {}
        self.issued_log[str(identity)] = IssuedRecord(
            str(identity), f"{issued.serial:x}", issued.not_after,
            dt.datetime.now(dt.UTC))
        return issued

    def issued(self) -> list[IssuedRecord]:
        return sorted(getattr(self, "issued_log", {}).values(), key=lambda r: r.identity)
