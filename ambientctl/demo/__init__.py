"""The built-in demo: a small shop of real processes (frontend -> catalog v1/v2 over
HTTP through a waypoint, frontend -> inventory over raw TCP) and a namespace outside
the mesh for contrast. Servers use the standard library only, so the pods start fast
and need nothing beyond the interpreter that runs ambientctl."""
