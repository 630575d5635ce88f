"""Outlier detection (sans I/O): eject an endpoint after N consecutive 5xx or gateway
errors, bring it back after base_ejection_time x (times ejected), never eject more
than max_ejection_percent of a service's endpoints (but always allow one, as Envoy
does: the check is "ejected share below the max" before ejecting).

The caller passes the clock in seconds. `interval` is the sweep period: ejected
endpoints return at the first sweep after their time is up, and an endpoint that
stays healthy through a sweep has its ejection multiplier decreased."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

E = TypeVar("E")

GATEWAY_ERRORS = frozenset({502, 503, 504})


@dataclass(frozen=True)
class OutlierConfig:
    consecutive_5xx: int = 5  # 0: 5xx ejection off (gateway errors alone eject)
    consecutive_gateway_errors: int = 0  # 0: not used separately
    interval_s: float = 10.0
    base_ejection_s: float = 30.0
    max_ejection_percent: int = 10


@dataclass
class _State:
    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    ejected_until: float | None = None
    times_ejected: int = 0
    healthy_since_sweep: bool = True


@dataclass
class Ejection:
    endpoint: str
    until: float
    times: int


@dataclass
class OutlierDetector:
    """One per backend service. Endpoints are named by "ip:port" strings."""

    config: OutlierConfig
    _states: dict[str, _State] = field(default_factory=dict)
    _next_sweep: float | None = None

    def _state(self, ep: str) -> _State:
        st = self._states.get(ep)
        if st is None:
            st = self._states[ep] = _State()
        return st

    def record(self, ep: str, status: int | None, now: float, total_endpoints: int
               ) -> Ejection | None:
        """Record one outcome (status None: connect failure or reset, a gateway
        error). Returns the ejection it caused, if any."""
        self.sweep(now)
        st = self._state(ep)
        if status is not None and status < 500:
            st.consecutive_5xx = 0
            st.consecutive_gateway = 0
            return None
        st.healthy_since_sweep = False
        st.consecutive_5xx += 1
        if status is None or status in GATEWAY_ERRORS:
            st.consecutive_gateway += 1
        else:
            st.consecutive_gateway = 0
        cfg = self.config
        tripped = (cfg.consecutive_5xx > 0 and st.consecutive_5xx >= cfg.consecutive_5xx) or (
            cfg.consecutive_gateway_errors > 0
            and st.consecutive_gateway >= cfg.consecutive_gateway_errors
        )
        if not tripped or st.ejected_until is not None:
            return None
        ejected = sum(1 for s in self._states.values() if s.ejected_until is not None)
        if total_endpoints <= 0 or ejected * 100 / total_endpoints >= cfg.max_ejection_percent:
            return None
        st.times_ejected += 1
        st.ejected_until = now + cfg.base_ejection_s * st.times_ejected
        st.consecutive_5xx = 0
        st.consecutive_gateway = 0
        return Ejection(ep, st.ejected_until, st.times_ejected)

    def sweep(self, now: float) -> list[str]:
        """Run every sweep due by `now` (in one pass, however long we were idle);
        returns the endpoints brought back."""
        interval = self.config.interval_s
        if self._next_sweep is None:
            self._next_sweep = now + interval
            return []
        if now < self._next_sweep:
            return []
        ticks = int((now - self._next_sweep) // interval) + 1
        first_tick = self._next_sweep
        last_tick = first_tick + (ticks - 1) * interval
        returned: list[str] = []
        for ep, st in self._states.items():
            if st.ejected_until is not None:
                if last_tick < st.ejected_until:
                    continue
                waited = max(0.0, st.ejected_until - first_tick)
                back_tick = first_tick + -(-waited // interval) * interval
                st.ejected_until = None
                st.healthy_since_sweep = True
                returned.append(ep)
                healthy_ticks = int((last_tick - back_tick) // interval)
            else:
                healthy_ticks = ticks if st.healthy_since_sweep else ticks - 1
                st.healthy_since_sweep = True
            st.times_ejected = max(0, st.times_ejected - healthy_ticks)
        self._next_sweep = last_tick + interval
        return returned

    def is_ejected(self, ep: str, now: float) -> bool:
        self.sweep(now)
        st = self._states.get(ep)
        return st is not None and st.ejected_until is not None

    def available(self, endpoints: Sequence[E], key: Iterable[str], now: float) -> list[E]:
        """Endpoints not ejected; all of them when every one is ejected (panic mode:
        some traffic beats none)."""
        keys = list(key)
        healthy = [e for e, k in zip(endpoints, keys, strict=True) if not self.is_ejected(k, now)]
        return healthy or list(endpoints)

    def ejected(self) -> list[str]:
        return sorted(ep for ep, st in self._states.items() if st.ejected_until is not None)
