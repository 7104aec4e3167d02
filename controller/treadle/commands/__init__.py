"""Subcommands of ``treadle``; each module exposes ``register(subparsers)``.

A command parses its arguments, calls the library and prints: what it
computes or writes lives beside its kind (:mod:`treadle.provision`,
:mod:`treadle.keygen`, :mod:`treadle.daemon.client`, :mod:`treadle.fabric`,
:mod:`treadle.demo`), where other commands, the demo and the tests use it too.
"""
