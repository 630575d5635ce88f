"""`ambientctl dashboard`: a live web page of the mesh (service graph, golden
metrics, denials, health), served by aiohttp on 127.0.0.1. See docs/observability.md."""
