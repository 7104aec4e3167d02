"""Treadle: a GitOps controller for datacenter fabrics (the controller side and the ``treadle`` command)."""

from treadle_agent import __version__  # one version for the distribution, kept beside the agent

__all__ = ["__version__"]
