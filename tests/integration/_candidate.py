"""A candidate process for the election tests.

    python _candidate.py ENDPOINT PREFIX NAME TTL [RECORD_KEY]

Campaigns and prints `LEADER NAME` once elected. Without RECORD_KEY it then keeps running
until SIGTERM (resign, exit 0) or a lost lease (`LOST NAME`, exit 1). With RECORD_KEY it
writes NAME to that key every 0.1 s, fenced by its leadership, until a write is rejected
(`FENCED NAME`, exit 2): it does not look at its session first, so the fence is what
stops a leader that was frozen (SIGSTOP) past its lease.
"""

from __future__ import annotations

import asyncio
import ctypes
import signal
import sys

from google.protobuf import wrappers_pb2

from sharemesh.runtime.coordination import Election, Leadership, Session, Store, connect
from sharemesh.runtime.errors import FencedOut, Unavailable


async def write_until_fenced(store: Store, key: str, name: str, leadership: Leadership) -> int:
    while True:
        try:
            await store.put(key, wrappers_pb2.StringValue(value=name), fences=[leadership])
        except FencedOut:
            print(f"FENCED {name}", flush=True)
            return 2
        except Unavailable:
            pass
        await asyncio.sleep(0.1)


async def main(endpoint: str, prefix: str, name: str, ttl: int, record: str | None) -> int:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with connect(endpoint) as client, Session(client, ttl) as session:
        print(f"CANDIDATE {name} {session.lease_hex}", flush=True)
        election = Election(session, prefix)
        campaign = asyncio.ensure_future(election.campaign(name.encode()))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({campaign, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not campaign.done():
            campaign.cancel()
            return 0
        leadership = campaign.result()
        print(f"LEADER {name}", flush=True)
        if record:
            work = asyncio.ensure_future(
                write_until_fenced(Store(client, "/"), record, name, leadership)
            )
        else:
            work = asyncio.ensure_future(session.done.wait())
        await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if work.done() and not stop.is_set():
            if record:
                return work.result()
            print(f"LOST {name}", flush=True)
            return 1
        work.cancel()
        await election.resign()
        return 0


if __name__ == "__main__":
    # Die with the test runner, even if it is killed: no orphan keeps a lease alive.
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    args = sys.argv[1:]
    sys.exit(
        asyncio.run(
            main(args[0], args[1], args[2], int(args[3]), args[4] if len(args) > 4 else None)
        )
    )
