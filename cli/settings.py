"""CLI settings resolved from flags > `CSR_VDB_*` env vars > `csr-vdb.toml` > defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from csr_vdb.errors import ConfigError
from csr_vdb.store import STORE_KINDS, StoreKind, redact_uri

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10: the backport, if installed
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]


CONFIG_FILE_NAME = "csr-vdb.toml"

DEFAULT_URIS: dict[str, str] = {
    "milvus": "./csr_vdb.db",  # Milvus Lite, embedded
    "qdrant-edge": "./csr_vdb_qdrant",  # Qdrant Edge, embedded
    "qdrant": "http://localhost:6333",  # a local Qdrant server
}

# Keys a config file may hold at top level (anything else is a ConfigError, like extra="forbid").
FILE_KEYS = {
    "store", "uri", "token", "state_dir", "device", "timeout", "retries",
    "milvus_uri", "milvus_token", "qdrant_url", "qdrant_api_key",
}


class CLISettings(BaseModel):
    """Where the CLI finds the database, its state and its compute device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: StoreKind = Field("milvus", description="Vector database kind: milvus, qdrant or qdrant-edge.")
    uri: str = Field(description="File/dir path of an embedded engine, or an http(s)/grpc server URL.")
    token: SecretStr | None = Field(None, description="Milvus token or Qdrant API key (never printed).")
    state_dir: Path = Field(Path(".csr-vdb"), description="Where plans, journals, reports and exports live.")
    device: str | None = Field(None, description="Torch device for encoding/training: cpu, cuda, or auto.")
    timeout: float = Field(10.0, gt=0, description="Seconds one request waits for a database server.")
    retries: int = Field(
        3, ge=0, description="Retries of a request that fails transiently (connection refused/reset, timeout)."
    )
    config_file: Path | None = Field(None, description="The config file that was read, if any.")

    def public(self) -> dict[str, Any]:
        """Settings safe to print: the secret is reduced to whether one is set."""
        return {
            "store": self.store,
            "uri": redact_uri(self.uri),
            "token_set": self.token is not None,
            "state_dir": str(self.state_dir),
            "device": self.device,
            "timeout": self.timeout,
            "retries": self.retries,
            "config_file": str(self.config_file) if self.config_file else None,
        }


def read_config_file(path: Path | None, cwd: Path | None = None) -> tuple[dict[str, Any], Path | None]:
    """Read ``path`` (must exist) or ``./csr-vdb.toml`` (optional); returns (values, path read)."""
    if path is None:
        cand = (cwd or Path.cwd()) / CONFIG_FILE_NAME
        if not cand.is_file():
            return {}, None
        path = cand
    elif not path.is_file():
        raise ConfigError(f"config file {path} not found")
    if tomllib is None:  # pragma: no cover - Python 3.10 without tomli
        raise ConfigError(f"reading {path} needs Python 3.11+ or the 'tomli' package")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    unknown = sorted(set(data) - FILE_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown key(s) in {path}: {', '.join(unknown)} (allowed: {', '.join(sorted(FILE_KEYS))})"
        )
    return data, path


def _first(*values: Any) -> Any:
    for v in values:
        if v is not None and v != "":
            return v
    return None


def resolve_settings(
    flags: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    config_path: Path | None = None,
    cwd: Path | None = None,
) -> CLISettings:
    """Merge the four sources, most specific first: flags > env > config file > defaults.

    Args:
        flags: command-line values (None = not given): store, uri, token, state_dir, device, timeout,
            retries.
        env: environment (default ``os.environ``); only ``CSR_VDB_*`` names are read.
        config_path: ``--config`` value; None looks for ``./csr-vdb.toml``.
        cwd: directory holding the default config file (tests).

    Raises:
        ConfigError: unreadable/unknown config file keys or invalid values.
    """
    env = os.environ if env is None else env
    file, file_path = read_config_file(config_path or _path(env.get("CSR_VDB_CONFIG")), cwd)
    store = _first(flags.get("store"), env.get("CSR_VDB_STORE"), file.get("store"), "milvus")
    if store not in STORE_KINDS:
        raise ConfigError(f"unknown store '{store}' (choose from {', '.join(STORE_KINDS)})")
    if store == "milvus":
        env_uri, env_tok = env.get("CSR_VDB_MILVUS_URI"), env.get("CSR_VDB_MILVUS_TOKEN")
        file_uri, file_tok = file.get("milvus_uri"), file.get("milvus_token")
    elif store == "qdrant":
        env_uri, env_tok = env.get("CSR_VDB_QDRANT_URL"), env.get("CSR_VDB_QDRANT_API_KEY")
        file_uri, file_tok = file.get("qdrant_url"), file.get("qdrant_api_key")
    else:  # the embedded engine has neither a server URL nor a key
        env_uri = env_tok = file_uri = file_tok = None
    uri = _first(flags.get("uri"), env.get("CSR_VDB_URI"), env_uri, file.get("uri"), file_uri, DEFAULT_URIS[store])
    token = _first(flags.get("token"), env_tok, file.get("token"), file_tok)
    values = {
        "store": store,
        "uri": str(uri),
        "token": token,
        "state_dir": _first(flags.get("state_dir"), env.get("CSR_VDB_STATE_DIR"), file.get("state_dir"), ".csr-vdb"),
        "device": _first(flags.get("device"), env.get("CSR_VDB_DEVICE"), file.get("device")),
        "timeout": _first(flags.get("timeout"), env.get("CSR_VDB_TIMEOUT"), file.get("timeout"), 10.0),
        "retries": _first(flags.get("retries"), env.get("CSR_VDB_RETRIES"), file.get("retries"), 3),
        "config_file": file_path,
    }
    try:
        settings = CLISettings(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid setting '{field}': {first['msg']}") from None
    if settings.device not in (None, "auto", "cpu") and not settings.device.startswith("cuda"):
        raise ConfigError(f"invalid device '{settings.device}' (cpu, cuda, cuda:N or auto)")
    return settings


def shard_from_env(env: Mapping[str, str] | None = None) -> str:
    """``--shard auto``: the ``i/n`` of a worker of a Kubernetes Indexed Job.

    Kubernetes sets ``JOB_COMPLETION_INDEX`` (i) in every pod of an Indexed Job; the manifest sets
    ``JOB_COMPLETIONS`` (n) to the Job's ``completions`` (docs/scale-out.md).

    Raises:
        ConfigError: either variable is missing or they do not make a shard ``0 <= i < n``.
    """
    from csr_vdb.migrations.plan import parse_shard

    env = os.environ if env is None else env
    index, count = env.get("JOB_COMPLETION_INDEX"), env.get("JOB_COMPLETIONS")
    if not index or not count:
        raise ConfigError(
            "--shard auto needs JOB_COMPLETION_INDEX and JOB_COMPLETIONS in the environment (a Kubernetes "
            "Indexed Job sets the index; set JOB_COMPLETIONS to its completions: see docs/scale-out.md)"
        )
    shard = f"{index.strip()}/{count.strip()}"
    parse_shard(shard, what="--shard auto (JOB_COMPLETION_INDEX/JOB_COMPLETIONS)")
    return shard


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None
