"""Kubernetes mode of the controller: list+watch the API server into the same
registry the file source feeds, keep the CA root in a Secret, authenticate node
agents and waypoints with TokenReview, and own the waypoint Deployments.

Owns talking to the Kubernetes API (through kubernetes_asyncio) and translating its
objects; must not decide mesh behaviour itself (that is the registry's and the
snapshot builder's job), nor import the node agent or the waypoint."""
