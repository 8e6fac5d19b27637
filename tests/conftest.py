import os
import sys

# Tests import `tests.reference_np`; make the repo root importable however pytest is started.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
