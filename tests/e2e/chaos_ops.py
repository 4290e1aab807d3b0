"""Chaos against a running mesh: tenants' workers that keep a model of what the mesh
acknowledged, a killer of the mesh's processes (kill -9), and the checks that the mesh
ended true to the model, on the host and over NFS. The CI suite (test_chaos.py) and the
longer benchmark (bench/bench_chaos.py) run the same code."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import random
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2

from sharemesh.client import Client
from sharemesh.ganesha import GaneshaInstance
from sharemesh.launcher import LocalMesh
from sharemesh.runtime import quota
from sharemesh.runtime.capacity import pool_allocations
from sharemesh.runtime.coordination import Store, connect
from sharemesh.runtime.health import wait_serving
from sharemesh.runtime.lifecycle.share import public
from sharemesh.state.v1 import records_pb2
from sharemesh.v1 import access_rule_pb2, share_pb2
from sharemesh.v1 import share_service_pb2 as ss

from support import loops_under, mounts_under, nfs_read, nfs_write, pid_alive, run

Share = share_pb2.Share
AccessRule = access_rule_pb2.AccessRule
GIB = 1 << 30
CLIENT = "127.0.0.1"  # where this process's NFS client comes from
BACKEND = "local"
DRIVER_HOST = f"driver-host-{BACKEND}"
TARGETS = ("api", "scheduler", DRIVER_HOST, "gateway", "ganesha", "etcd")
# A call that failed so may or may not have acted: repeated with the same request id.
RETRIED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
# What a call may answer instead of an Operation: the request conflicts with the state
# or the quota, and nothing was done.
REFUSALS = {
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
STEADY = (Share.ACTIVE,)


def mesh_config(projects: dict[str, int], capacity_gib: int) -> str:
    """A one-backend mesh with a key and a quota (GiB) for each project."""
    quotas = ", ".join(f"{p} = {gib}" for p, gib in projects.items())
    keys = "".join(f'\n[[api.tokens]]\ntoken = "{p}-key"\nproject = "{p}"\n' for p in projects)
    return (
        "reconcile_interval_seconds = 2\n"
        f"[quotas]\nprojects = {{ {quotas} }}\n"
        f'[[backends]]\nname = "{BACKEND}"\ndriver = "local"\n'
        f"[backends.options]\ncapacity_gib = {capacity_gib}\n" + keys
    )


@dataclass
class Tally:
    """What happened, for the assertions and the benchmark's figures."""

    ops: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, outcome)
    retries: Counter[str] = field(default_factory=Counter)  # status code of a retried call
    kills: Counter[str] = field(default_factory=Counter)
    refusals: dict[tuple[str, str], str] = field(default_factory=dict)  # the first of each
    problems: list[str] = field(default_factory=list)

    def acknowledged_failures(self) -> list[str]:
        return [p for p in self.problems if p.startswith("op ")]


@dataclass
class Clock:
    """Calls and waits are retried until `deadline`, set once the kills stop."""

    deadline: float | None = None

    def past(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline


@dataclass
class ModelShare:
    """A share as its owner's acknowledged operations made it."""

    name: str
    size_gib: int
    location: share_pb2.ExportLocation
    rules: dict[str, str] = field(default_factory=dict)  # rule name -> access_to


def admits_client(share: ModelShare) -> bool:
    return ipaddress.ip_network(CLIENT) in {ipaddress.ip_network(a) for a in share.rules.values()}


class Worker:
    """One tenant's client: one operation at a time on the project's own shares, each
    call repeated with its request id while it fails UNAVAILABLE, each Operation waited
    for to the end."""

    def __init__(self, client: Client, project: str, seed: int, clock: Clock, tally: Tally) -> None:
        self.client = client
        self.project = project
        self.rng = random.Random(seed)
        self.clock = clock
        self.tally = tally
        self.live: dict[str, ModelShare] = {}
        self.deleted: list[ModelShare] = []
        self.tainted: set[str] = set()  # shares an unanswered or failed op left unknown
        self.refused_creates: set[str] = set()
        self._n = 0

    def _next(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}-{self._n}"

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.step()

    async def step(self) -> None:
        shares = [s for s in self.live.values() if s.name not in self.tainted]
        choices: list[tuple[str, int]] = [("create_share", 4 if len(self.live) < 3 else 0)]
        if shares:
            choices += [("create_rule", 3), ("resize", 2), ("delete_share", 2)]
            if any(s.rules for s in shares):
                choices.append(("delete_rule", 2))
        choices = [c for c in choices if c[1]]
        if not choices:  # every share it has is unknown after a problem: stay idle
            await asyncio.sleep(1)
            return
        kinds, weights = zip(*choices)
        kind = self.rng.choices(kinds, weights)[0]
        if kind == "create_share":
            await self._create_share()
            return
        share = self.rng.choice([s for s in shares if s.rules] if kind == "delete_rule" else shares)
        await getattr(self, f"_{kind}")(share)

    async def delete_all(self) -> None:
        for share in list(self.live.values()):
            await self._delete_share(share)

    # ---- the operations ----------------------------------------------------------------

    async def _create_share(self) -> None:
        share_id = self._next("s")
        name = f"projects/{self.project}/shares/{share_id}"
        request = ss.CreateShareRequest(
            parent=f"projects/{self.project}",
            share_id=share_id,
            request_id=f"{self.project}-{share_id}",
            share=Share(size_gib=self.rng.choice((1, 2))),
        )
        done = await self._act("create_share", name, self.client.shares.CreateShare, request)
        if done is None:
            self.refused_creates.add(name)
            return
        made = Share()
        done.response.Unpack(made)
        self.live[name] = ModelShare(name, made.size_gib, made.export_locations[0])

    async def _create_rule(self, share: ModelShare) -> None:
        rule_id = self._next("r")
        taken = {ipaddress.ip_network(a) for a in share.rules.values()}
        access_to = CLIENT
        if admits_client(share):
            access_to = f"10.77.{self.rng.randrange(256)}.{self._n % 256}"
        if ipaddress.ip_network(access_to) in taken:
            return
        request = ss.CreateAccessRuleRequest(
            parent=share.name,
            access_rule_id=rule_id,
            request_id=f"{self.project}-{rule_id}",
            access_rule=AccessRule(access_to=access_to, access_level=AccessRule.READ_WRITE),
        )
        done = await self._act(
            "create_rule", share.name, self.client.shares.CreateAccessRule, request
        )
        if done is not None:
            made = AccessRule()
            done.response.Unpack(made)
            share.rules[made.name] = made.access_to  # as the api normalized it

    async def _delete_rule(self, share: ModelShare) -> None:
        rule = self.rng.choice(sorted(share.rules))
        request = ss.DeleteAccessRuleRequest(name=rule, request_id=self._next(self.project))
        if await self._act("delete_rule", share.name, self.client.shares.DeleteAccessRule, request):
            del share.rules[rule]

    async def _resize(self, share: ModelShare) -> None:
        size = share.size_gib + 1
        request = ss.ResizeShareRequest(
            name=share.name, size_gib=size, request_id=self._next(self.project)
        )
        if await self._act("resize", share.name, self.client.shares.ResizeShare, request):
            share.size_gib = size

    async def _delete_share(self, share: ModelShare) -> None:
        request = ss.DeleteShareRequest(name=share.name, request_id=self._next(self.project))
        if await self._act("delete_share", share.name, self.client.shares.DeleteShare, request):
            self.deleted.append(self.live.pop(share.name))

    # ---- calling and waiting -------------------------------------------------------------

    async def _act(
        self, kind: str, share: str, method: Any, request: Any
    ) -> operations_pb2.Operation | None:
        """The finished Operation, or None if the call was refused (or the op failed,
        which is a problem noted in the tally and leaves `share` unknown)."""
        answer = await self._call(method, request)
        if isinstance(answer, grpc.aio.AioRpcError):
            code = answer.code()
            if code in REFUSALS:
                self.tally.ops[kind, f"refused {code.name}"] += 1
                self.tally.refusals.setdefault((kind, code.name), answer.details() or "")
                await asyncio.sleep(0.2)  # as a client would, before trying something else
            else:
                self.tally.ops[kind, f"call {code.name}"] += 1
                self.tally.problems.append(
                    f"call {kind} on {share} answered {code.name}: {answer.details()}"
                )
                self.tainted.add(share)
            return None
        outcome, done = await self._wait(answer)
        self.tally.ops[kind, outcome] += 1
        if outcome != "done":
            message = done.error.message if done is not None else ""
            self.tally.problems.append(f"op {kind} {answer.name} on {share}: {outcome} {message}")
            self.tainted.add(share)
            return None
        return done

    async def _call(self, method: Any, request: Any) -> Any:
        backoff = 0.2
        while True:
            try:
                return await self.client.call(method, request, timeout=10)
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRIED or self.clock.past():
                    return error
                self.tally.retries[error.code().name] += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _wait(
        self, op: operations_pb2.Operation
    ) -> tuple[str, operations_pb2.Operation | None]:
        while not op.done:
            if self.clock.past():
                return "not done by the deadline", op
            answer = await self._call(
                self.client.operations.WaitOperation,
                operations_pb2.WaitOperationRequest(
                    name=op.name, timeout=duration_pb2.Duration(seconds=3)
                ),
            )
            if isinstance(answer, grpc.aio.AioRpcError):
                if answer.code() == grpc.StatusCode.NOT_FOUND:
                    return "lost", None
                if answer.code() not in RETRIED:
                    return f"wait {answer.code().name}", None
                continue  # the deadline passed while it was unavailable
            op = answer
        if op.HasField("error"):
            return f"failed {code_name(op.error.code)}", op
        return "done", op


def code_name(number: int) -> str:
    return next((c.name for c in grpc.StatusCode if c.value[0] == number), str(number))


# ---- killing -------------------------------------------------------------------------------


def ganesha_state(mesh: LocalMesh) -> Path:
    return mesh.state_dir / "pools" / BACKEND / "ganesha" / "ganesha"


def _pid_of(mesh: LocalMesh, target: str) -> int | None:
    if target == "etcd":
        return mesh.etcd.pid if mesh.etcd else None
    if target == "ganesha":
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            return int((ganesha_state(mesh) / "ganesha.pid").read_text().split()[0])
        return None
    return mesh.children[target].pid


async def live_pid(mesh: LocalMesh, target: str, timeout: float) -> int | None:
    """The target's pid once it runs (it may still be restarting from a kill)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = _pid_of(mesh, target)
        if pid and pid_alive(pid):
            return pid
        await asyncio.sleep(0.1)
    return None


async def kill9(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while pid_alive(pid):
        await asyncio.sleep(0.02)


async def killer(
    mesh: LocalMesh,
    stop: asyncio.Event,
    tally: Tally,
    rng: random.Random,
    interval: tuple[float, float],
) -> float:
    """Kills a target every `interval` seconds until `stop`, each target once per round
    in a random order; the time of the last kill. A target that does not come back
    within 30 s is a problem."""
    last = time.monotonic()
    order: list[str] = []
    while True:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.uniform(*interval))
        if stop.is_set():
            return last
        if not order:
            order = rng.sample(TARGETS, len(TARGETS))
        target = order.pop()
        pid = await live_pid(mesh, target, 30)
        if pid is None:
            tally.problems.append(f"{target} was not running 30 s after its last kill")
            continue
        await kill9(pid)
        tally.kills[target] += 1
        last = time.monotonic()


async def converge(mesh: LocalMesh, workers: list[Worker], stopped: float) -> float:
    """Waits (until the workers' clock's deadline) for every worker's last operation,
    every process and every share to settle, and Ganesha to serve exactly the live
    shares' exports; seconds since `stopped`."""
    clock = workers[0].clock
    assert clock.deadline is not None

    def left() -> float:
        return max(1.0, clock.deadline - time.monotonic())  # type: ignore[operator]

    for target in ("etcd", "ganesha"):
        if await live_pid(mesh, target, left()) is None:
            raise AssertionError(f"{target} is not running again after the kills")
    # The probe ports: the services' own want a mesh certificate.
    probes = mesh.probe_addresses().values()
    await asyncio.gather(*(wait_serving(a, timeout=left()) for a in probes))
    while True:
        records = await share_records(mesh)
        moving = [
            r.spec.share.name
            for r in records
            if public(r).state not in (Share.ACTIVE, Share.ERROR) or r.pending_operations
        ]
        if not moving:
            break
        if clock.past():
            raise AssertionError(f"shares still changing at the deadline: {moving}")
        await asyncio.sleep(0.5)
    # What the host is short of now is a leak or a lost export only if it stays so.
    while await check_host(mesh) and not clock.past():
        await asyncio.sleep(0.5)
    return time.monotonic() - stopped


# ---- what the mesh holds --------------------------------------------------------------------


async def share_records(mesh: LocalMesh) -> list[records_pb2.ShareRecord]:
    assert mesh.etcd is not None
    async with connect(mesh.etcd.endpoint) as client:
        store = Store(client)
        return [f.value for f in await store.scan(store.root + "shares/", records_pb2.ShareRecord)]


async def accounting(mesh: LocalMesh, projects: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Each pool's allocated GiB and each project's used quota, as etcd counts them."""
    assert mesh.etcd is not None
    async with connect(mesh.etcd.endpoint) as client:
        store = Store(client)
        pools = {k: v.value.allocated_gib for k, v in (await pool_allocations(store)).items()}
        used = {p: await quota.used_gib(store, p) for p in projects}
    return pools, used


async def list_all(client: Client, method: Any, request: Any, field_name: str) -> list[Any]:
    items: list[Any] = []
    while True:
        response = await client.call(method, request)
        items += getattr(response, field_name)
        if not response.next_page_token:
            return items
        request.page_token = response.next_page_token


async def mountable(location: share_pb2.ExportLocation) -> bool:
    """Whether this host's NFS client may mount the export (NFSv3 MOUNT, then a list)."""
    host, pseudo = location.path.split(":", 1)
    url = (
        f"nfs://{host}{pseudo}?version=3&nfsport={location.nfs_port}"
        f"&mountport={location.mount_port}"
    )
    code, _ = await run("timeout", "8", "nfs-ls", url)
    return code == 0


async def read_write(location: share_pb2.ExportLocation, scratch: Path, tag: str) -> str:
    """Writes a file over NFSv3 and reads it back over v3 and v4; '' or what failed."""
    host, pseudo = location.path.split(":", 1)
    data = scratch / f"{tag}.in"
    data.write_bytes(os.urandom(32 << 10))
    code, out = await nfs_write(
        data, host, pseudo, f"{tag}.bin", location.nfs_port, location.mount_port
    )
    if code:
        return f"write failed: {out.strip()}"
    for version in (3, 4):
        back = scratch / f"{tag}.v{version}"
        code, out = await nfs_read(
            back, host, pseudo, f"{tag}.bin", location.nfs_port, version, location.mount_port
        )
        if code or back.read_bytes() != data.read_bytes():
            return f"NFSv{version} read failed: {out.strip()}"
    return ""


# ---- the checks after convergence ------------------------------------------------------------


async def check_model(workers: list[Worker], admin: Client) -> list[str]:
    """The API shows exactly what the acknowledged operations made: each live share
    ACTIVE at its size with its rules ACTIVE; deleted and refused ones absent."""
    problems: list[str] = []
    for worker in workers:
        shares = await list_all(
            admin,
            admin.shares.ListShares,
            ss.ListSharesRequest(parent=f"projects/{worker.project}", page_size=100),
            "shares",
        )
        seen = {s.name: s for s in shares}
        for share in seen.values():
            if share.state not in STEADY:
                problems.append(
                    f"{share.name} is {Share.State.Name(share.state)}: {share.state_message}"
                )
        for name in seen.keys() - worker.live.keys() - worker.tainted:
            why = "its create was refused" if name in worker.refused_creates else "it was deleted"
            problems.append(f"{name} exists although {why}")
        for name, model in worker.live.items():
            if name in worker.tainted:
                continue
            if name not in seen:
                problems.append(f"{name} is gone although no delete of it was acknowledged")
                continue
            if seen[name].size_gib != model.size_gib:
                problems.append(f"{name} is {seen[name].size_gib} GiB, not {model.size_gib}")
            rules = await list_all(
                admin,
                admin.shares.ListAccessRules,
                ss.ListAccessRulesRequest(parent=name, page_size=100),
                "access_rules",
            )
            actual = {r.name: r.access_to for r in rules}
            if actual != model.rules:
                problems.append(f"{name} has rules {actual}, not {model.rules}")
            problems += [
                f"{r.name} is {AccessRule.State.Name(r.state)}: {r.state_message}"
                for r in rules
                if r.state != AccessRule.ACTIVE
            ]
    return problems


async def check_accounting(mesh: LocalMesh, projects: list[str]) -> list[str]:
    """Every pool's allocation is the sum of its shares' sizes; every project's quota
    usage is the sum of its shares' sizes."""
    records = await share_records(mesh)
    pools, used = await accounting(mesh, projects)
    problems = []
    by_pool: Counter[str] = Counter()
    by_project: Counter[str] = Counter()
    for r in records:
        size = public(r).size_gib
        by_pool[r.placement.pool] += size
        by_project[r.project] += size
        if not r.allocated_gib == r.status.realized_size_gib == size:
            problems.append(
                f"{r.spec.share.name}: size {size}, allocated {r.allocated_gib}, "
                f"realized {r.status.realized_size_gib} GiB"
            )
    for pool in pools.keys() | by_pool.keys():
        if pools.get(pool, 0) != by_pool[pool]:
            problems.append(f"{pool} counts {pools.get(pool, 0)} GiB, its shares {by_pool[pool]}")
    for project in projects:
        if used[project] != by_project[project]:
            problems.append(
                f"{project} uses {used[project]} GiB of quota, its shares {by_project[project]}"
            )
    return problems


async def check_host(mesh: LocalMesh) -> list[str]:
    """Images, mounts, loop devices, export files and Ganesha's live exports are exactly
    those of the live shares."""
    assert mesh.config is not None
    records = await share_records(mesh)
    uids = {r.spec.share.uid for r in records}
    export_ids = {r.export_id for r in records}
    pool = mesh.state_dir / "pools" / BACKEND
    problems = []
    images = {p.stem: p for p in (pool / "images").glob("*.img")}
    if images.keys() != uids:
        problems.append(f"images {sorted(images.keys() ^ uids)} differ from the live shares")
    for r in records:
        image, size = images.get(r.spec.share.uid), public(r).size_gib
        if image is not None and image.stat().st_size != size * GIB:
            problems.append(
                f"{r.spec.share.name}'s image is {image.stat().st_size} bytes, not {size} GiB"
            )
    mounted = {line.split()[1].rsplit("/", 1)[1] for line in mounts_under(pool / "mnt")}
    if mounted != uids:
        problems.append(f"mounts {sorted(mounted ^ uids)} differ from the live shares")
    dirs = {p.name for p in (pool / "mnt").iterdir()}
    if dirs != uids:
        problems.append(f"mountpoints {sorted(dirs ^ uids)} differ from the live shares")
    loops = Counter(
        Path(re.sub(r" \(deleted\)$", "", line.split("(", 1)[1].rsplit(")", 1)[0])).stem
        for line in loops_under(pool / "images")
        if "/snapshots/" not in line  # a snapshot's own read-only mount, when exported
    )
    if loops != Counter(uids):
        problems.append(f"loop devices {dict(loops)} differ from the live shares")
    state = ganesha_state(mesh)
    # The export files are what Ganesha's next start serves (ganesha.conf includes them).
    files = {int(p.stem) for p in (state / "exports.d").glob("*.conf")}
    if files != export_ids:
        problems.append(f"export files {sorted(files ^ export_ids)} differ from the live shares")
    backend = next(b for b in mesh.config.backends if b.name == BACKEND)
    options = backend.options
    ganesha = GaneshaInstance(state, int(options["nfs_port"]), int(options["mount_port"]))
    served = await ganesha.live_export_ids()
    if served != export_ids:
        problems.append(f"Ganesha serves exports {sorted(served)}, live {sorted(export_ids)}")
    return problems


async def check_data_path(workers: list[Worker], scratch: Path) -> list[str]:
    """Every live share with a rule for this client is read- and writable over NFS;
    every other live share and every deleted one refuses it."""
    problems = []
    gate = asyncio.Semaphore(4)

    async def probe(model: ModelShare, deleted: bool) -> None:
        async with gate:
            tag = model.name.replace("/", "_")
            if not deleted and admits_client(model):
                if failed := await read_write(model.location, scratch, tag):
                    problems.append(f"{model.name} (rule for {CLIENT}): {failed}")
            elif await mountable(model.location):
                why = "deleted" if deleted else f"without a rule for {CLIENT}"
                problems.append(f"{model.name} ({why}) can be mounted")

    await asyncio.gather(
        *(probe(m, False) for w in workers for n, m in w.live.items() if n not in w.tainted),
        *(probe(m, True) for w in workers for m in w.deleted),
    )
    return problems


@dataclass
class Outcome:
    tally: Tally
    workers: list[Worker]
    converged: float | None  # seconds from the last kill to a settled mesh
    problems: list[str]


async def chaos(
    mesh: LocalMesh,
    projects: list[str],
    seconds: float,
    kill_interval: tuple[float, float],
    converge_seconds: float,
    seed: int,
    scratch: Path,
) -> Outcome:
    """One worker per project and the killer for `seconds`; then, with the kills
    stopped, convergence within `converge_seconds` and every check. Clients stay open
    in the outcome's workers for what the caller does next."""
    tally, clock = Tally(), Clock()
    workers = [
        Worker(Client(mesh.api_address, f"{p}-key"), p, seed + i, clock, tally)
        for i, p in enumerate(projects)
    ]
    stop = asyncio.Event()
    killing = asyncio.create_task(killer(mesh, stop, tally, random.Random(seed), kill_interval))
    running = [asyncio.create_task(w.run(stop)) for w in workers]
    await asyncio.sleep(seconds)
    stop.set()
    last_kill = await killing
    clock.deadline = time.monotonic() + converge_seconds
    await asyncio.gather(*running)
    problems = list(tally.problems)
    try:
        converged: float | None = await converge(mesh, workers, last_kill)
    except AssertionError as stuck:
        return Outcome(tally, workers, None, [*problems, str(stuck)])
    async with Client(mesh.api_address, mesh.admin_token) as admin:
        problems += await check_model(workers, admin)
    problems += await check_accounting(mesh, projects)
    problems += await check_host(mesh)
    problems += await check_data_path(workers, scratch)
    return Outcome(tally, workers, converged, problems)


def report(outcome: Outcome, seconds: float) -> str:
    tally, converged, problems = outcome.tally, outcome.converged, outcome.problems
    lines = [f"chaos: {seconds:.0f} s of load and kills"]
    kinds = sorted({k for k, _ in tally.ops})
    for kind in kinds:
        outcomes = {o: n for (k, o), n in tally.ops.items() if k == kind}
        lines.append(f"  {kind:13s} " + ", ".join(f"{o} {n}" for o, n in sorted(outcomes.items())))
    lines.append(f"  calls retried: {dict(tally.retries)}")
    lines += [f"  e.g. {k} {c}: {d}" for (k, c), d in sorted(tally.refusals.items())]
    lines.append(f"  kills: {dict(sorted(tally.kills.items()))} ({sum(tally.kills.values())})")
    lines.append(
        "  converged "
        + (f"{converged:.1f} s after the last kill" if converged is not None else "never")
    )
    lines.append(f"  problems: {len(problems)}")
    lines += [f"    {p}" for p in problems]
    return "\n".join(lines)
