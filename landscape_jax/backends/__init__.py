"""Platform-specific speed-ups that compute the same functions faster (`backends.cpu`).

Backends depend on nothing else in the package; every layer above may use them. Each speed-up is
checked against the unchanged function (see the tests of each module).
"""

__all__ = ["cpu"]
