"""Treadle: a GitOps controller for datacenter fabrics (the controller side and the ``treadle`` command)."""

__version__ = "0.1.0"
