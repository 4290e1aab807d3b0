"""A candidate process for the election tests.

    python _candidate.py ENDPOINT PREFIX NAME TTL

Campaigns, prints `LEADER NAME` once elected, and keeps running; SIGTERM resigns and
exits 0; a lost lease prints `LOST NAME` and exits 1.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from sharemesh.runtime.coordination import Election, Session, connect


async def main(endpoint: str, prefix: str, name: str, ttl: int) -> int:
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
        campaign.result()
        print(f"LEADER {name}", flush=True)
        lost = asyncio.ensure_future(session.done.wait())
        await asyncio.wait({lost, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if session.done.is_set() and not stop.is_set():
            print(f"LOST {name}", flush=True)
            return 1
        await election.resign()
        return 0


if __name__ == "__main__":
    endpoint, prefix, name, ttl = sys.argv[1:5]
    sys.exit(asyncio.run(main(endpoint, prefix, name, int(ttl))))
