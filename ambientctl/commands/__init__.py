"""One module per command, each exposing `command` (a click command); cli.py
registers them all, so it reads as the table of contents of the CLI."""
