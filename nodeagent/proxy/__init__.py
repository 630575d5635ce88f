"""The L4 node proxy: listeners inside each enrolled pod's netns (15001 outbound,
15006 inbound plaintext, 15008 inbound HBONE), relaying bytes and recording telemetry.

Decisions come from sans-I/O modules one level up (outbound_plan, authz, state); this
package only moves bytes between sockets and tunnels.
"""
