import sys
from pathlib import Path

# Tests share small builders (e.g. `test_tinyvlm.make_policy`).
sys.path.insert(0, str(Path(__file__).parent))
