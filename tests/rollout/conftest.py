import sys
from pathlib import Path

# The helper modules beside the tests (loopback_peers.py) are imported by name; pytest does not
# put test directories on sys.path by itself.
sys.path.insert(0, str(Path(__file__).parent))
