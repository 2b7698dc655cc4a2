"""Wiring: configuration, the runner that orders the stages, and the command line."""
