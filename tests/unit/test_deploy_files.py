"""The operator's deploy files, checked offline with the tools an operator would use:
`systemd-analyze` for the units, the Kubernetes schemas (`kubernetes-validate`) for the
manifests, and the config loader for every setting they give. The config reference
must be what `scripts/gen-config-doc` writes from the code."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sharemesh.driver_host.drivers.local import LocalDriverConfig
from sharemesh.runtime import config as mesh_config
from sharemesh.runtime import tls

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
KUBERNETES = ROOT / "deploy" / "kubernetes"
UNITS = sorted(p for p in SYSTEMD.iterdir() if p.suffix in (".service", ".target"))
MANIFESTS = sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
# The units name the install prefix of a packaged sharemesh; the checkout's virtualenv
# has the same commands.
PREFIX = "/opt/sharemesh/"
# The oldest Kubernetes whose gRPC probes are GA, and the newest the schemas bundle.
KUBERNETES_VERSIONS = ["1.27.0", "1.37.0"]
# Unprivileged units stay within this `systemd-analyze security` exposure (0-10; "OK"
# is below 2). The root services are exempt: their units say why.
SANDBOXED = ["sharemesh-api.service", "sharemesh-scheduler.service", "sharemesh-etcd.service"]
MAX_EXPOSURE = 1.5


def _gen_config_doc() -> types.ModuleType:
    path = ROOT / "scripts" / "gen-config-doc"
    loader = importlib.machinery.SourceFileLoader("gen_config_doc", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # its dataclass looks its module up while defined
    loader.exec_module(module)
    return module


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: install Debian's `systemd` package"
    return tool


def _instance_name(unit: Path) -> str:
    """A template is checked as an instance: `x@.service` as `x@local.service`."""
    return unit.name.replace("@.", "@local.")


@pytest.fixture
def installed_units(tmp_path: Path) -> Path:
    """The units as installed, with the prefix pointing at this checkout's commands."""
    venv = f"{ROOT / '.venv'}/"
    for unit in UNITS:
        (tmp_path / _instance_name(unit)).write_text(unit.read_text().replace(PREFIX, venv))
    return tmp_path


def _unit_entries(text: str) -> Iterator[tuple[str, str, str]]:
    """(section, key, value) of every setting in a unit file."""
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        yield section, key.strip(), value.strip()


def _unit(name: str) -> dict[str, list[str]]:
    entries: dict[str, list[str]] = {}
    for _, key, value in _unit_entries((SYSTEMD / name).read_text()):
        entries.setdefault(key, []).append(value)
    return entries


# ---- the config reference ---------------------------------------------------------------


def test_config_reference_is_current() -> None:
    generated = _gen_config_doc().render()
    assert (ROOT / "docs" / "config.md").read_text() == generated, (
        "docs/config.md is stale: run scripts/gen-config-doc"
    )


def _changed(value: Any) -> tuple[str, Any]:
    """Another value of the setting's type: as the environment spells it, and as loaded."""
    if isinstance(value, bool):
        return str(not value).lower(), not value
    if isinstance(value, int | float):
        return str(value + 7), value + 7
    return f"{value}-changed", f"{value}-changed"


def test_every_documented_environment_override_changes_its_setting() -> None:
    overridable = [s for s in _gen_config_doc().settings(mesh_config.MeshConfig) if s.env]
    assert len(overridable) > 10
    for setting in overridable:
        default: Any = mesh_config.MeshConfig()
        for part in setting.path:
            default = getattr(default, part)
        text, expected = _changed(default)
        loaded: Any = mesh_config.load(None, env={setting.env: text})
        for part in setting.path:
            loaded = getattr(loaded, part)
        assert loaded == expected, setting.env


# ---- systemd ----------------------------------------------------------------------------


def test_systemd_units_verify(installed_units: Path) -> None:
    units = sorted(str(p) for p in installed_units.iterdir())
    run = subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", *units],
        capture_output=True,
        text=True,
        cwd=installed_units,
        timeout=120,
    )
    # An unknown key or a bad value is only a warning to systemd, yet a broken unit.
    assert run.returncode == 0 and not (run.stdout + run.stderr).strip(), run.stdout + run.stderr


def test_systemd_units_name_only_units_that_exist() -> None:
    ours = {_instance_name(unit) for unit in UNITS}
    for unit in UNITS:
        for section, key, value in _unit_entries(unit.read_text()):
            if key in ("Requires", "Wants", "After", "Before", "PartOf", "WantedBy"):
                for name in value.replace("%i", "local").split():
                    assert not name.startswith("sharemesh") or name in ours, (
                        f"{unit.name}: [{section}] {key} names {name}, not in deploy/systemd"
                    )


@pytest.mark.parametrize("name", SANDBOXED)
def test_unprivileged_units_are_sandboxed(installed_units: Path, name: str) -> None:
    run = subprocess.run(
        [
            _systemd_analyze(),
            "security",
            "--offline=yes",
            "--no-pager",
            str(installed_units / name),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", run.stdout)
    assert found, run.stdout + run.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, run.stdout


@pytest.mark.parametrize(
    ("service", "servers", "release"),
    [
        (
            "sharemesh-driver-host@.service",
            "sharemesh-driver-host-servers@%i.service",
            "%i --release",
        ),
        ("sharemesh-gateway.service", "sharemesh-gateway-servers.service", "--release"),
    ],
)
def test_a_restart_keeps_ganesha_and_a_mesh_stop_releases_it(
    service: str, servers: str, release: str
) -> None:
    unit = _unit(service)
    # The service leaves its Ganesha on an orderly stop, and systemd does not kill it.
    assert not any("--own-servers" in line for line in unit["ExecStart"])
    assert unit["KillMode"] == ["process"]
    # Its servers' unit releases them when it stops, after the service (ordered after it).
    assert servers in unit["Requires"] and servers in " ".join(unit["After"])
    held = _unit(servers.replace("%i", ""))
    assert held["ExecStop"][0].endswith(release)
    assert held["PartOf"] == ["sharemesh.target"] and held["RemainAfterExit"] == ["yes"]


SERVICES = {
    "sharemesh-api.service": "api",
    "sharemesh-scheduler.service": "scheduler",
    "sharemesh-driver-host@.service": "driver-host-%i",
    "sharemesh-gateway.service": "gateway",
}
CREDENTIALS_DIR = "/run/credentials/x"


@pytest.mark.parametrize(("name", "certificate"), SERVICES.items())
def test_every_service_unit_presents_its_own_mesh_certificate(name: str, certificate: str) -> None:
    unit = _unit(name)
    # systemd copies the files in: the unit's user needs no access to /etc/sharemesh/tls.
    loaded = dict(line.split(":", 1) for line in unit["LoadCredential"])
    assert loaded["ca.crt"] == "/etc/sharemesh/tls/ca.crt", name
    assert loaded["tls.crt"] == f"/etc/sharemesh/tls/{certificate}.crt", name
    assert loaded["tls.key"] == f"/etc/sharemesh/tls/{certificate}.key", name
    env = dict(line.split("=", 1) for line in unit.get("Environment", []))
    given = {k: v.replace("%d", CREDENTIALS_DIR) for k, v in env.items()}
    config = mesh_config.load(None, env=given)
    files = {f"{CREDENTIALS_DIR}/{f}" for f in ("ca.crt", "tls.crt", "tls.key")}
    mesh = tls.identity(config.tls)
    assert mesh is not None and {mesh.ca_file, mesh.cert_file, mesh.key_file} == files, name
    # etcd wants a client certificate too: the same one, unless [etcd] names others.
    etcd = tls.etcd_identity(config.etcd, config.tls)
    assert etcd is not None and {etcd.ca_file, etcd.cert_file, etcd.key_file} == files, name


def test_every_unit_running_a_service_is_checked_for_its_certificate() -> None:
    for unit in UNITS:
        runs = " ".join(_unit(unit.name).get("ExecStart", []))
        if "/opt/sharemesh/bin/sharemesh-" in runs:
            assert unit.name in SERVICES, f"{unit.name}: add it to SERVICES"


def test_etcd_unit_serves_health_and_metrics_in_plaintext_on_loopback_only() -> None:
    env = dict(line.split("=", 1) for line in _unit("sharemesh-etcd.service")["Environment"])
    assert env["ETCD_CLIENT_CERT_AUTH"] == "true"
    assert env["ETCD_LISTEN_METRICS_URLS"].startswith("http://127.0.0.1:")


# ---- Kubernetes -------------------------------------------------------------------------


def _resources(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in MANIFESTS:
        for resource in _resources(path):
            pod = resource.get("spec", {}).get("template", {}).get("spec")
            if pod:
                yield f"{path.name}: {resource['metadata']['name']}", pod


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_manifests_validate(version: str) -> None:
    checked, errors = 0, []
    for path in MANIFESTS:
        for resource in _resources(path):
            where = f"{path.name}: {resource.get('kind')}/{resource['metadata']['name']}"
            try:
                # Strict: a misspelled or misplaced field fails instead of being ignored.
                kubernetes_validate.validate(resource, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                field = ".".join(str(p) for p in error.path)
                errors.append(f"{where}: {field}: {error.message}")
            assert resource["metadata"].get("namespace", "sharemesh") == "sharemesh", where
            checked += 1
    assert not errors, f"invalid for Kubernetes {version}:\n" + "\n".join(errors)
    assert checked >= 10


def test_kustomization_applies_every_manifest_and_makes_every_secret() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS)
    generated = {secret["name"] for secret in kustomization["secretGenerator"]}
    config_maps = {
        r["metadata"]["name"] for p in MANIFESTS for r in _resources(p) if r["kind"] == "ConfigMap"
    }
    for where, pod in _pod_specs():
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in generated, where
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, where


def test_every_kubernetes_container_has_probes_and_resources() -> None:
    for where, pod in _pod_specs():
        for container in pod["containers"]:
            assert {"livenessProbe", "readinessProbe"} <= container.keys(), where
        for container in pod["containers"] + pod.get("initContainers", []):
            resources = container.get("resources", {})
            assert resources.get("requests") and resources.get("limits", {}).get("memory"), where


def _port(container: dict[str, Any], port: int | str) -> int:
    """A probe's port as a number (it may name one of the container's ports)."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def _plaintext_ports(container: dict[str, Any]) -> set[int]:
    """Ports the container serves without TLS: its sharemesh service's probe port, and
    etcd's metrics URLs (/health, /metrics)."""
    env = {var["name"]: var.get("value", "") for var in container.get("env", [])}
    ports = set()
    probe = env.get(f"{mesh_config.ENV_PREFIX}TLS__PROBE_LISTEN")
    if probe:
        ports.add(mesh_config.split_host_port(probe)[1])
    for url in env.get("ETCD_LISTEN_METRICS_URLS", "").split(","):
        if url.startswith("http://"):
            ports.add(int(url.rsplit(":", 1)[1]))
    return ports


def test_kubelet_probes_target_only_plaintext_ports() -> None:
    # The kubelet presents no client certificate: a grpc or httpGet probe of a mutual
    # TLS port fails its handshake and the pod never becomes ready.
    probed = 0
    for where, pod in _pod_specs():
        for container in pod["containers"]:
            plaintext = _plaintext_ports(container)
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = container.get(kind, {})
                for handler in ("grpc", "httpGet"):
                    if handler in probe:
                        port = _port(container, probe[handler]["port"])
                        assert port in plaintext, f"{where}: {kind} probes TLS port {port}"
                        probed += 1
    assert probed >= 12


def test_every_sharemesh_container_mounts_the_tls_files_of_the_config(tmp_path: Path) -> None:
    config = tmp_path / "sharemesh.toml"
    config.write_text(_config_map_toml())
    mesh = tls.identity(mesh_config.load(config).tls)
    assert mesh is not None
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    secrets = {s["name"]: s["files"] for s in kustomization["secretGenerator"]}
    for where, pod in _pod_specs():
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"] + pod.get("initContainers", []):
            if not container["image"].startswith("sharemesh"):
                continue
            for path in (mesh.ca_file, mesh.cert_file, mesh.key_file):
                directory, _, file = path.rpartition("/")
                (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
                secret = volumes[mount["name"]]["secret"]["secretName"]
                keys = {entry.split("=", 1)[0] for entry in secrets[secret]}
                assert file in keys, f"{where}: {secret} has no {file}"


# ---- the settings they give -------------------------------------------------------------


def _config_map_toml() -> str:
    (config_map,) = [r for r in _resources(KUBERNETES / "config.yaml") if r["kind"] == "ConfigMap"]
    return str(config_map["data"]["sharemesh.toml"])


def _manifest_overrides() -> dict[str, str]:
    """The `SHAREMESH__…` variables the workloads set, with a sample pod address."""
    env: dict[str, str] = {}
    for _, pod in _pod_specs():
        for container in pod["containers"] + pod.get("initContainers", []):
            for var in container.get("env", []):
                if var["name"].startswith(mesh_config.ENV_PREFIX):
                    value = var.get("value", "node-1")
                    env[var["name"]] = re.sub(r"\$\(\w+\)", "192.0.2.7", value)
    return env


def _unit_overrides() -> dict[str, str]:
    """The `SHAREMESH__…` variables the units set, with a sample credentials directory."""
    env: dict[str, str] = {}
    for unit in UNITS:
        for _, key, value in _unit_entries(unit.read_text()):
            name, _, setting = value.partition("=")
            if key == "Environment" and name.startswith(mesh_config.ENV_PREFIX):
                env[name] = setting.replace("%d", "/run/credentials/x").replace("%S", "/var/lib")
    return env


def test_deploy_files_give_only_settings_that_exist(tmp_path: Path) -> None:
    config = tmp_path / "sharemesh.toml"
    config.write_text(_config_map_toml())
    loaded = mesh_config.load(config, env=_manifest_overrides())
    assert loaded.scheduler.listen == "192.0.2.7:8471"
    assert loaded.gateway.listen == "192.0.2.7:8472"
    for backend in loaded.backends:
        assert backend.driver == "local"
        mesh_config.from_mapping(LocalDriverConfig, backend.options, "options.")
    example = ROOT / "deploy" / "sharemesh.example.toml"
    assert mesh_config.load(example, env=_unit_overrides()).api.tls_key_file.endswith("tls.key")
    # Every backend's driver-host in Kubernetes names a backend of the config.
    backends = {b["name"] for b in tomllib.loads(_config_map_toml())["backends"]}
    for where, pod in _pod_specs():
        for container in pod["containers"]:
            if "--backend" in container["command"]:
                index = container["command"].index("--backend") + 1
                assert container["command"][index] in backends, where
