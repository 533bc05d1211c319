"""The leaf layer: what every other layer may import (roles, access tokens, settings, shared app keys).

It imports nothing from the rest of Stoa; tests/test_layers.py holds it to that (docs/architecture.md).
"""

__version__ = "0.1.0"
