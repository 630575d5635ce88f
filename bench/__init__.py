"""Benchmarks of ambient-mesh; each module runs as `python -m bench.<name>`."""
