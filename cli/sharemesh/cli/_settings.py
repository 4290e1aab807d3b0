"""Where the CLI finds its endpoint, key and project: flags, then the environment,
then a config file, as `openstack`, `gcloud` and `kubectl` do.

The file is TOML, `$SHAREMESH_CONFIG` or `~/.config/sharemesh/config.toml`
(`$XDG_CONFIG_HOME` is honoured), with top-level keys `endpoint`, `token`, `project`
and `ca_file`.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ENDPOINT = "127.0.0.1:8470"
KEYS = ("endpoint", "token", "project", "ca_file")


class SettingsError(Exception):
    """The config file cannot be read; the message says which and why."""


def config_path(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    if env.get("SHAREMESH_CONFIG"):
        return Path(env["SHAREMESH_CONFIG"])
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "sharemesh" / "config.toml"


@dataclass
class Settings:
    endpoint: str
    token: str
    project: str
    ca_file: str
    # Where each value came from, for error hints ("flag", "SHAREMESH_TOKEN", a file).
    sources: dict[str, str]


def load(flags: dict[str, str | None], env: dict[str, str] | None = None) -> Settings:
    """Each of KEYS from its flag, else `SHAREMESH_<KEY>`, else the config file."""
    env = dict(os.environ) if env is None else env
    path = config_path(env)
    file: dict[str, object] = {}
    if path.is_file():
        try:
            file = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise SettingsError(f"cannot read {path}: {error}") from None
        unknown = sorted(set(file) - set(KEYS))
        if unknown:
            raise SettingsError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    for key in KEYS:
        var = f"SHAREMESH_{key.upper()}"
        for source, value in ((f"--{key}", flags.get(key)), (var, env.get(var))):
            if value:
                values[key], sources[key] = value, source
                break
        else:
            if file.get(key):
                values[key], sources[key] = str(file[key]), str(path)
    return Settings(
        endpoint=values.get("endpoint", DEFAULT_ENDPOINT),
        token=values.get("token", ""),
        project=values.get("project", ""),
        ca_file=values.get("ca_file", ""),
        sources=sources,
    )
