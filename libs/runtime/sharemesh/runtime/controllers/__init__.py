"""Controllers driven by watches, in the manner of controller-runtime: an `Informer`
keeps what a process cares about in memory from a list and a watch, its handlers map
changes to keys, and a `Controller`'s workers reconcile each key from a `WorkQueue`."""

from ._informer import Handler, Informer, Lister, list_prefix
from ._queue import Controller, WorkQueue

__all__ = ["Controller", "Handler", "Informer", "Lister", "WorkQueue", "list_prefix"]
