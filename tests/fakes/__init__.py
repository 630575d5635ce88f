"""Fakes that speak real protocols, so real client libraries run against them unchanged."""
