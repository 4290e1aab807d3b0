"""The driver conformance suite: the same tests against every driver (csi-sanity's idea).

A driver is done when it passes. To add one, give `conftest.py` a `Subject` for it.
"""
