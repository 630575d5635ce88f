# ambient-mesh: the two commands are `make demo` and `make test`.
# Both run scripts/setup.sh first: idempotent, fast when nothing is missing.
VENV := .venv
PY := $(VENV)/bin/python
PKGS := mesh ebpf nodeagent waypoint controller ambientctl

.PHONY: setup test lint unit netns e2e demo down bench soak proto clean

setup:
	@bash scripts/setup.sh

lint: setup
	$(VENV)/bin/ruff check $(PKGS) tests bench
	$(VENV)/bin/mypy

unit: setup
	$(PY) -m pytest tests/unit -q

netns: setup
	$(PY) -m pytest tests/netns -q -m netns

e2e: setup
	$(PY) -m pytest tests/e2e -q

test: setup lint
	$(PY) -m pytest tests -q

demo: setup
	$(VENV)/bin/ambientctl up
	$(PY) -m ambientctl.demo_traffic
	$(VENV)/bin/ambientctl status
	@echo
	@echo "Look around (see docs/quickstart.md):"
	@echo "  $(VENV)/bin/ambientctl get pods -A"
	@echo "  $(VENV)/bin/ambientctl explain demo/frontend-0 catalog.demo:80/items"
	@echo "  $(VENV)/bin/ambientctl explain legacy/client demo/inventory-0:9000"
	@echo "  $(VENV)/bin/ambientctl metrics --summary"
	@echo "  $(VENV)/bin/ambientctl dashboard        # live graph: open the URL it prints (docs/observability.md)"
	@echo "  $(VENV)/bin/ambientctl exec demo/frontend-0 -- $(PY) -m ambientctl.demo.client http://catalog.demo/items"
	@echo "Stop it and remove every trace: $(VENV)/bin/ambientctl down   (or: make down)"

down: setup
	$(VENV)/bin/ambientctl down

bench: setup
	$(PY) -m bench

# The long variants of the reliability tests (docs/reliability.md): controller down
# 60 s, rotation every 10 s for 120 s, 2000 concurrent + 50 000 churn, ...; the fuzz
# tests with 10x the examples. Figures are printed at the end ("reliability figures").
soak: setup
	AMBIENT_SOAK=1 $(PY) -m pytest tests -q -rfE -k "soak or rotation or reliability or fuzz"

proto: setup

clean:
	rm -rf $(VENV) .setup-stamps .mypy_cache .ruff_cache .pytest_cache

# The node image for Kubernetes (daemonset/Dockerfile); needs Debian's docker.io and
# debootstrap, starts dockerd by hand if none runs. Not part of `make test`.
.PHONY: image
image:
	bash daemonset/build-image.sh
