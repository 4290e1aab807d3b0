"""A program that starts with the client library (a launcher, a benchmark) spawns
children while its gRPC calls run, and none dies between fork and exec. With gRPC's fork
handlers on, about one child in twelve aborted there (`epoll_wait ... Bad file
descriptor`, exit -6): the launcher then saw a service exit at start."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

_PROGRAM = textwrap.dedent(
    """
    import asyncio, subprocess
    from sharemesh.client import Client  # the first import, as in bench_shares
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async def main():
        server = grpc.aio.server()
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        stub = health_pb2_grpc.HealthStub(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))

        forking = True

        async def calls():
            while forking:
                try:
                    await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                except grpc.aio.AioRpcError:
                    pass

        busy = asyncio.create_task(calls())
        failed = 0
        for _ in range(200):
            # preexec_fn: a real fork, as the launcher's (it enters namespaces there).
            child = subprocess.Popen(["true"], preexec_fn=lambda: None)
            failed += child.wait() != 0
            await asyncio.sleep(0.002)
        forking = False
        await busy
        print(failed)

    asyncio.run(main())
    """
)


def test_children_spawned_beside_grpc_calls_all_reach_exec() -> None:
    # As a program starts from a shell: not with this test process's own setting.
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "0", (done.stdout, done.stderr[-2000:])
