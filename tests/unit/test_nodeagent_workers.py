from prometheus_client import CollectorRegistry, Counter, generate_latest

from nodeagent.workers import ScalePolicy, merge_expositions


def test_scale_up_on_sustained_load_down_when_idle() -> None:
    policy = ScalePolicy(max_workers=1, busy_for=3, idle_for=5)
    assert [policy.decide(0.9, 0) for _ in range(3)] == [0, 0, 1]
    assert policy.decide(0.95, 1) == 0  # at the limit
    assert [policy.decide(0.01, 1) for _ in range(5)] == [0, 0, 0, 0, -1]
    assert policy.decide(0.01, 0) == 0  # nothing left to retire


def test_a_burst_is_not_sustained_load() -> None:
    policy = ScalePolicy(max_workers=3, busy_for=3)
    assert [policy.decide(c, 0) for c in (0.9, 0.9, 0.2, 0.9, 0.9)] == [0] * 5


def test_merge_sums_samples_with_the_same_labels() -> None:
    texts = []
    for counts in ({"x": 2, "y": 1}, {"x": 3}):
        registry = CollectorRegistry()
        counter = Counter("conns", "connections", ["pod"], registry=registry)
        for pod, n in counts.items():
            counter.labels(pod).inc(n)
        texts.append(generate_latest(registry).decode())
    merged = merge_expositions(texts)
    assert 'conns_total{pod="x"} 5.0' in merged
    assert 'conns_total{pod="y"} 1.0' in merged
    assert "_created" not in merged
    assert "# TYPE conns counter" in merged
