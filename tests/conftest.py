import os
import sys

# The shared test problems and the NumPy references (tests/support) are imported by name.
SUPPORT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support")
sys.path.insert(0, SUPPORT)
