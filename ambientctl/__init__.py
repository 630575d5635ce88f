"""The ambientctl CLI and the embedded local mesh (`ambientctl up` / `down`).
Nothing imports this package."""
