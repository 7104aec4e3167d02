"""What the test suites share: importable as ``support`` (pyproject's pytest ``pythonpath`` puts tests/ on the path).

The small parts every suite needs:

- :mod:`support.git`: the git CLI with a fixed identity and no user configuration; a bare repository and a work clone.
- :mod:`support.net`: a free port on a loopback address.
- :mod:`support.procs`: a daemon as a child process with its log; waiting for a condition; the controller's port.
- :mod:`support.clock`: a clock the test moves.
- :mod:`support.keys`: the controller's signing key, written as `treadle keys generate` writes it.

The fleets and servers built on them:

- :mod:`support.fleet`: a real controller and real agents as processes (the rollout, deploy and real-node tests).
- :mod:`support.local_fleet`: the same fabric, controller and agents in-process, stepped by a fake clock.
- :mod:`support.obs_fleet`, :mod:`support.prometheus`, :mod:`support.promql`: the observability tests' fleet,
  their Prometheus and the reader of the shipped PromQL.
- :mod:`support.realnode`, :mod:`support.nodefleet`: a booted Debian node and the fleet of such nodes.
- :mod:`support.console_state`, :mod:`support.console_git`, :mod:`support.chromium`: the console's controller
  state (synthetic, or from a real fabric repository) and a headless browser.
- :mod:`support.git_servers`, :mod:`support.loopback_peers`, :mod:`support.nginx_mirror`: git over HTTP and SSH,
  agents that hang or refuse, the manifest mirror.
- :mod:`support.providers`, :mod:`support.review`, :mod:`support.differential`, :mod:`support.fabric_model`,
  :mod:`support.npm_tools`: the helpers of one suite each, kept here so that no suite edits ``sys.path``.
"""

import shutil
from pathlib import Path

#: The repository's root.
REPO = Path(__file__).resolve().parents[2]
#: The example fabric the project ships.
TEMPLATE = REPO / "fabric-repo-template"


def copy_template(target: Path) -> Path:
    """A copy of the example fabric at ``target`` (without the files that make it a Python package); ``target``."""
    shutil.copytree(
        TEMPLATE, target, ignore=shutil.ignore_patterns("__pycache__", "__init__.py", "*.pyc")
    )
    return target
