"""TrafficPolicy (ambientmesh.io/v1alpha1): resilience settings a waypoint applies to
a Service: retry budget and retry safety, outlier detection, connection limits, rate
limit, faults."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from mesh.config.base import Resource, StrictModel, check_duration

API_VERSION = "ambientmesh.io/v1alpha1"


class ServiceTargetReference(StrictModel):
    group: Literal["", "core"] = ""
    kind: Literal["Service"] = "Service"
    name: str = Field(min_length=1)


class RetryBudget(StrictModel):
    percent: float = Field(default=20.0, ge=0, le=100)
    min_retries_per_second: int = Field(default=10, ge=0)


class OutlierDetection(StrictModel):
    """Istio's outlier detection fields. Gateway errors (502, 503, 504, connect
    failures, resets) also count as 5xx errors, so a gateway-error threshold only
    matters below the 5xx one; 0 switches a threshold off."""

    consecutive_5xx_errors: int = Field(
        default=5, ge=0, alias="consecutive5xxErrors"
    )
    consecutive_gateway_errors: int = Field(default=0, ge=0)
    interval: str = "10s"
    base_ejection_time: str = "30s"
    max_ejection_percent: int = Field(default=10, ge=0, le=100)

    @field_validator("interval", "base_ejection_time")
    @classmethod
    def _duration(cls, v: str) -> str:
        return check_duration(v)

    @model_validator(mode="after")
    def _thresholds(self) -> OutlierDetection:
        five, gateway = self.consecutive_5xx_errors, self.consecutive_gateway_errors
        if five == 0 and gateway == 0:
            raise ValueError(
                "consecutiveGatewayErrors: must be >= 1 when consecutive5xxErrors is 0 "
                "(0 switches 5xx ejection off, so nothing would ever be ejected)")
        if five and gateway >= five:
            raise ValueError(
                f"consecutiveGatewayErrors: must be below consecutive5xxErrors ({gateway} >= "
                f"{five}): gateway errors also count as 5xx errors, so it would never act; "
                f"lower it, or set consecutive5xxErrors: 0 to eject on gateway errors only")
        return self


class ConnectionPool(StrictModel):
    max_connections: int | None = Field(default=None, ge=1)
    max_pending_requests: int | None = Field(default=None, ge=1)
    max_requests_per_connection: int | None = Field(default=None, ge=1)


class RateLimit(StrictModel):
    """Local token bucket per route rule; with perSourceIdentity each caller's SPIFFE
    identity gets its own bucket of that size, so one noisy client cannot starve the
    others (callers without an identity share one bucket)."""

    requests_per_unit: int = Field(ge=1)
    unit: Literal["second", "minute", "hour"] = "second"
    burst: int | None = Field(default=None, ge=1)
    per_source_identity: bool = False


class RetrySettings(StrictModel):
    """What the HTTPRoute retry (Gateway API) cannot say: whether requests with
    non-idempotent methods (POST, PATCH, CONNECT; gRPC calls, which are POSTs) may be
    retried. Off by default: their first try may already have had effects."""

    allow_non_idempotent: bool = False


class FaultDelay(StrictModel):
    percent: float = Field(default=100.0, ge=0, le=100)
    fixed_delay: str

    @field_validator("fixed_delay")
    @classmethod
    def _duration(cls, v: str) -> str:
        return check_duration(v)


class FaultAbort(StrictModel):
    percent: float = Field(default=100.0, ge=0, le=100)
    http_status: int = Field(ge=200, le=599)


class FaultInjection(StrictModel):
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


class TrafficPolicySpec(StrictModel):
    target_refs: list[ServiceTargetReference] = Field(min_length=1)
    retry_budget: RetryBudget | None = None
    retry: RetrySettings | None = None
    outlier_detection: OutlierDetection | None = None
    connection_pool: ConnectionPool | None = None
    rate_limit: RateLimit | None = None
    fault_injection: FaultInjection | None = None

    @model_validator(mode="after")
    def _something(self) -> TrafficPolicySpec:
        if not any((
            self.retry_budget, self.retry, self.outlier_detection, self.connection_pool,
            self.rate_limit, self.fault_injection,
        )):
            raise ValueError(
                "must set at least one of retryBudget, retry, outlierDetection, "
                "connectionPool, rateLimit, faultInjection"
            )
        return self


class TrafficPolicy(Resource):
    KIND: ClassVar[str] = "TrafficPolicy"
    API_VERSIONS: ClassVar[tuple[str, ...]] = (API_VERSION,)
    spec: TrafficPolicySpec
