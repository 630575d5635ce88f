"""TrafficPolicy (ambientmesh.io/v1alpha1): resilience settings a waypoint applies to
a Service: retry budget, outlier detection, connection limits, rate limit, faults."""

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
    consecutive_5xx_errors: int = Field(
        default=5, ge=1, alias="consecutive5xxErrors"
    )
    interval: str = "10s"
    base_ejection_time: str = "30s"
    max_ejection_percent: int = Field(default=10, ge=0, le=100)

    @field_validator("interval", "base_ejection_time")
    @classmethod
    def _duration(cls, v: str) -> str:
        return check_duration(v)


class ConnectionPool(StrictModel):
    max_connections: int | None = Field(default=None, ge=1)
    max_pending_requests: int | None = Field(default=None, ge=1)
    max_requests_per_connection: int | None = Field(default=None, ge=1)


class RateLimit(StrictModel):
    requests_per_unit: int = Field(ge=1)
    unit: Literal["second", "minute", "hour"] = "second"
    burst: int | None = Field(default=None, ge=1)


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
    outlier_detection: OutlierDetection | None = None
    connection_pool: ConnectionPool | None = None
    rate_limit: RateLimit | None = None
    fault_injection: FaultInjection | None = None

    @model_validator(mode="after")
    def _something(self) -> TrafficPolicySpec:
        if not any((
            self.retry_budget, self.outlier_detection, self.connection_pool,
            self.rate_limit, self.fault_injection,
        )):
            raise ValueError(
                "must set at least one of retryBudget, outlierDetection, connectionPool, "
                "rateLimit, faultInjection"
            )
        return self


class TrafficPolicy(Resource):
    KIND: ClassVar[str] = "TrafficPolicy"
    API_VERSIONS: ClassVar[tuple[str, ...]] = (API_VERSION,)
    spec: TrafficPolicySpec
