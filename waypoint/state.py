"""The waypoint's mutable runtime state around the immutable config: the decision
objects that carry counts across requests (retry budgets, outlier detectors,
connection limits, rate-limit buckets, round-robin cursors). A new snapshot swaps the
config; objects whose settings did not change keep their counts."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence

from waypoint.config import TrafficSettings, WaypointConfig
from waypoint.limits import ConnectionLimits, share_of
from waypoint.outlier import OutlierDetector
from waypoint.ratelimit import RateLimiter
from waypoint.retry import DEFAULT_RETRY_CODES, RetryBudget, RetryPolicy
from waypoint.routing import BackendTarget, RouteRule
from waypoint.upstream import Endpoint
from waypoint.weighted import WeightedPicker

# Without a TrafficPolicy retries still get a budget (Linkerd's default): 20 % of
# active requests plus 10 per second, so retries can never multiply an outage.
DEFAULT_RETRY_BUDGET = (20.0, 10)


class WaypointState:
    def __init__(self, config: WaypointConfig, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.rng = rng or random.Random()
        self.clock = clock
        self.rate_limiter = RateLimiter()
        self.share = 1.0  # of the local limits this process enforces (1/N of N workers)
        self._budgets: dict[str, tuple[tuple[float, int], RetryBudget]] = {}
        self._outliers: dict[tuple[str, str], tuple[object, OutlierDetector]] = {}
        self._limits: dict[str, tuple[object, ConnectionLimits]] = {}
        # Keyed by id(): a frozen RouteRule hashes every nested field on each lookup.
        # The rule is held in the value, so the id cannot be reused while cached.
        self._pickers: dict[int, tuple[RouteRule, WeightedPicker[BackendTarget]]] = {}
        self._policies: dict[tuple[int, str], tuple[RouteRule, RetryPolicy]] = {}
        self._cursor: dict[tuple[str, int], int] = {}

    def set_workers(self, workers: int) -> None:
        """One of `workers` processes: local rate and connection limits hold 1/N each,
        so that together the workers do not exceed the policy."""
        self.share = 1 / workers
        self.rate_limiter = RateLimiter(share=self.share)
        self._limits.clear()

    def update(self, config: WaypointConfig) -> None:
        self.config = config
        self._pickers.clear()
        self._policies.clear()

    def traffic(self, service: str) -> TrafficSettings:
        return self.config.traffic_for(service)

    def retry_budget(self, service: str) -> RetryBudget:
        settings = self.traffic(service).retry_budget or DEFAULT_RETRY_BUDGET
        held = self._budgets.get(service)
        if held is None or held[0] != settings:
            held = (settings, RetryBudget(settings[0], settings[1]))
            self._budgets[service] = held
        return held[1]

    def outlier(self, service: str, backend: str) -> OutlierDetector | None:
        cfg = self.traffic(service).outlier
        if cfg is None:
            return None
        key = (service, backend)
        held = self._outliers.get(key)
        if held is None or held[0] != cfg:
            held = (cfg, OutlierDetector(cfg))
            self._outliers[key] = held
        return held[1]

    def limits(self, service: str) -> ConnectionLimits | None:
        cfg = self.traffic(service).limits
        if cfg is None:
            return None
        held = self._limits.get(service)
        if held is None or held[0] != cfg:
            held = (cfg, ConnectionLimits(share_of(cfg, self.share)))
            self._limits[service] = held
        return held[1]

    def picker(self, rule: RouteRule) -> WeightedPicker[BackendTarget]:
        held = self._pickers.get(id(rule))
        if held is None or held[0] is not rule:
            held = (rule, WeightedPicker([(b, b.weight) for b in rule.backends], self.rng))
            self._pickers[id(rule)] = held
        return held[1]

    def retry_policy(self, rule: RouteRule, service: str) -> RetryPolicy:
        """The rule's retry settings with the service's TrafficPolicy, made once per
        config rather than per request."""
        key = (id(rule), service)
        held = self._policies.get(key)
        if held is None or held[0] is not rule:
            cfg = rule.retry
            backoff = cfg.backoff_ms if cfg else 25
            policy = RetryPolicy(
                attempts=cfg.attempts if cfg else 0,
                codes=cfg.codes if cfg and cfg.codes else DEFAULT_RETRY_CODES,
                backoff_base_ms=backoff, backoff_max_ms=backoff * 10,
                per_try_timeout_ms=rule.timeouts.backend_ms,
                retry_non_idempotent=self.traffic(service).retry_non_idempotent)
            held = self._policies[key] = (rule, policy)
        return held[1]

    def round_robin(self, backend: str, port: int, endpoints: Sequence[Endpoint],
                    avoid: str | None) -> Endpoint:
        """Next endpoint in turn, skipping the one the previous try failed on when
        there is another (Envoy's previous-hosts retry predicate)."""
        key = (backend, port)
        i = self._cursor.get(key)
        if i is None:  # start each backend at a random place (not eagerly: a cost per call)
            i = self.rng.randrange(1 << 16)
        ep = endpoints[i % len(endpoints)]
        if avoid is not None and ep.key == avoid and len(endpoints) > 1:
            i += 1
            ep = endpoints[i % len(endpoints)]
        self._cursor[key] = i + 1
        return ep
