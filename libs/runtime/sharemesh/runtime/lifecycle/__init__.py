"""The state machines of the mesh's resources, one module each: every transition is a
named function over a record, checked and stamped in one place, so no service sets a
state by hand. Pure: the callers read and write the records in their own transactions."""

from . import access_rule, share, snapshot

__all__ = ["access_rule", "share", "snapshot"]
