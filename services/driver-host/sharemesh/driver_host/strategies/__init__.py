"""The ways a share is made true on this backend, apart from the orchestration around
them (ShareSync: the share's lock, retries, deadlines, recording the outcome), as
ceph-csi keeps `core/` apart from `mounter/`. Each way is a `Strategy`:

- `Flat`: exported by the backend's own Ganesha to the share's rules;
- `BehindGateway`: on a share network, exported by the backend to nobody (or to the
  gateways' links) and re-exported into the tenant network by its host's gateway;
- `OnShareServer`: on a share network, exported by the backend's own server there;

and `Deletion` takes a share off its backend and out of etcd, whichever way it was
served."""

from ._common import Backend, Strategy, rules_of, spec_of
from .deletion import Deletion
from .flat import Flat
from .gateway import BehindGateway
from .share_server import OnShareServer

__all__ = [
    "Backend",
    "BehindGateway",
    "Deletion",
    "Flat",
    "OnShareServer",
    "Strategy",
    "rules_of",
    "spec_of",
]
