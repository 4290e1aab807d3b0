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
    assert mesh_config.load(example, env=_unit_overrides()).api.tls_key_file.endswith("api.key")
    # Every backend's driver-host in Kubernetes names a backend of the config.
    backends = {b["name"] for b in tomllib.loads(_config_map_toml())["backends"]}
    for where, pod in _pod_specs():
        for container in pod["containers"]:
            if "--backend" in container["command"]:
                index = container["command"].index("--backend") + 1
                assert container["command"][index] in backends, where
