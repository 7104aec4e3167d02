"""Subcommands of ``treadle``; each module exposes ``register(subparsers)``."""
