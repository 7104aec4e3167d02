import sys
from pathlib import Path

# The helpers beside the tests (nginx_mirror.py) and the rollout fleet's (a real controller over a
# real fabric) are imported by name; pytest does not put test directories on sys.path by itself.
sys.path.insert(0, str(Path(__file__).parents[1] / "rollout_e2e"))
sys.path.insert(0, str(Path(__file__).parent))
