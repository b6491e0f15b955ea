"""CLI plumbing: common options, the one error handler, progress bars and output rendering."""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from csr_vdb.cli.settings import CLISettings, resolve_settings, shard_from_env
from csr_vdb.store import STORE_KINDS
from csr_vdb.errors import CSRVDBError, StoreError
from csr_vdb.migrations.plan import parse_shard

logger = logging.getLogger("csr_vdb.cli")

_DEBUG_KEY = "csr_vdb.debug"
_COMMON = ("store", "uri", "token", "state_dir", "device", "config", "timeout", "retries", "json_out", "debug")


class CSRGroup(click.Group):
    """The command group; its `invoke` is the CLI's ONE error handler.

    `CSRVDBError` -> ``error: <message>`` on stderr and its ``exit_code``; ``OSError`` (a file that
    cannot be read or written) -> exit 1; anything else -> one line and exit 1. ``--debug`` re-raises
    with the traceback. Click's own usage errors keep exit code 2.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except CSRVDBError as exc:
            if ctx.meta.get(_DEBUG_KEY):
                raise
            _fail(ctx, str(exc), exc.exit_code)
        except OSError as exc:
            if ctx.meta.get(_DEBUG_KEY):
                raise
            _fail(ctx, f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc), 1)
        except Exception as exc:  # the last resort: one line, never a traceback without --debug
            if ctx.meta.get(_DEBUG_KEY):
                raise
            _fail(ctx, f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)", 1)


def _fail(ctx: click.Context, message: str, code: int) -> None:
    line = " ".join(str(message).split()) or "failed"
    click.echo(f"error: {line}", err=True)
    ctx.exit(code)


@dataclass
class App:
    """What every command receives: resolved settings, output mode and helpers."""

    flags: dict[str, Any]
    json: bool = False
    debug: bool = False
    _settings: CLISettings | None = None
    _stores: list[Any] = field(default_factory=list)

    @property
    def settings(self) -> CLISettings:
        if self._settings is None:
            self._settings = resolve_settings(
                {k: self.flags.get(k) for k in ("store", "uri", "token", "state_dir", "device", "timeout", "retries")},
                config_path=Path(self.flags["config"]) if self.flags.get("config") else None,
            )
        return self._settings

    @property
    def device(self) -> str | None:
        d = self.settings.device
        return None if d in (None, "auto") else d

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir

    def open_store(self) -> Any:
        """Open the configured store; it is closed when the command ends.

        Every command reads an existing database, so an embedded path that does not exist is a
        typo, not a request to create an empty database there (which the engines would do).
        """
        from csr_vdb.adapters import open_store

        s = self.settings
        if s.uri and "://" not in s.uri and not Path(s.uri).exists():
            raise StoreError(f"no {s.store} database at {s.uri} (check --uri)")
        if s.store == "milvus":
            import csr_vdb.adapters.milvus  # noqa: F401 - pymilvus sets its loggers' levels when imported
        quiet_client_loggers(self.debug)  # so a retried failure prints nothing until the final error line
        store = open_store(
            s.store, s.uri, token=s.token.get_secret_value() if s.token else None, timeout=s.timeout,
            retries=s.retries,
        )
        self._stores.append(store)
        return store

    def find_plan(self, store: Any, collection: str, target: str | None, shard: str) -> Any:
        """The saved `MigrationPlan` of ``collection`` (its source) in the configured store and state dir."""
        from csr_vdb.migrations import find_plan

        s = self.settings
        return find_plan(self.state_dir, s.store, s.uri, collection, target, shard, store=store)

    def run_on_plan(
        self, op: Callable[..., Any], collection: str, target: str | None, shard: str,
        human: Callable[[Any], str], *, bar: str | None = None, **options: Any,
    ) -> Any:
        """The body of a command on a saved migration (sync, verify, cutover, rollback, status):
        ``op(store, plan, state_base=..., **options)`` on the plan of ``collection``, with a progress
        bar named ``bar`` (passed as ``progress``), then its result emitted (``human`` renders it)
        and returned."""
        store = self.open_store()
        plan = self.find_plan(store, collection, target, shard)
        if bar is None:
            res = op(store, plan, state_base=self.state_dir, **options)
        else:
            with self.progress(bar) as update:
                res = op(store, plan, state_base=self.state_dir, progress=update, **options)
        self.emit(res, lambda: human(res))
        return res

    def close(self) -> None:
        while self._stores:
            store = self._stores.pop()
            try:
                store.close()
            except Exception as exc:  # closing must not hide the command's own result or error
                logger.warning("closing %s failed: %s", getattr(store, "uri", "store"), exc)

    # ---------------------------------------------------------------- output
    def emit(self, data: Any, human: str | Callable[[], str]) -> None:
        """Print ``data`` as JSON (``--json``) or the human rendering, on stdout."""
        if self.json:
            click.echo(json.dumps(to_jsonable(data), indent=2, sort_keys=False))
        else:
            click.echo(human() if callable(human) else human)

    def info(self, message: str) -> None:
        """A status line on stderr (silent with --json)."""
        if not self.json:
            click.echo(message, err=True)

    @property
    def bars(self) -> bool:
        return not self.json and sys.stderr.isatty()

    @contextmanager
    def progress(self, desc: str, unit: str = "rows", total: int | None = None) -> Iterator[Callable[..., None]]:
        """A tqdm bar on stderr fed by a library ``progress(done, total, ...)`` callback.

        Quiet when stderr is not a TTY or with --json.
        """
        from tqdm import tqdm

        bar = tqdm(desc=desc, unit=unit, total=total, disable=not self.bars, file=sys.stderr,
                   dynamic_ncols=True, leave=True)

        def update(done: int, total_: int | None = None, metrics: dict[str, Any] | None = None) -> None:
            if total_ is not None and bar.total != total_:
                bar.total = total_
            bar.update(max(0, int(done) - bar.n))
            if metrics:
                bar.set_postfix({k: _short(v) for k, v in list(metrics.items())[:4]}, refresh=False)

        try:
            yield update
        finally:
            bar.close()


def _short(v: Any) -> Any:
    return f"{v:.4g}" if isinstance(v, float) else v


def to_jsonable(obj: Any) -> Any:
    """pydantic models, dataclasses, paths and numpy scalars -> plain JSON values."""
    import dataclasses

    if hasattr(obj, "model_dump"):
        return to_jsonable(obj.model_dump(mode="json"))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        return to_jsonable(obj.item())
    return obj


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain aligned text table."""
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join([line, sep, *body])


def kv(pairs: dict[str, Any]) -> str:
    """``key: value`` lines."""
    w = max((len(k) for k in pairs), default=0)
    return "\n".join(f"{k.ljust(w)}  {_fmt(v)}" for k, v in pairs.items())


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v.is_integer() and abs(v) >= 2:  # byte counts and the like; recall 1.0 keeps decimals
            return f"{v:,.0f}"
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    if v is None:
        return "-"
    return str(v)


def quiet_client_loggers(debug: bool) -> None:
    """Milvus Lite's embedded gRPC server logs tracebacks for calls it does not implement (and the
    client retries differently); they are noise on a CLI's stderr unless --debug."""
    if not debug:
        for name in ("grpc._server", "grpc", "pymilvus", "milvus_lite"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


class AliasedChoice(click.Choice):
    """A `click.Choice` that also takes deprecated names of its values, unlisted in ``--help``.

    The old name is passed on as given (so its output keeps its old label) after a warning.
    """

    def __init__(self, choices: Sequence[str], aliases: dict[str, str]) -> None:
        super().__init__(choices)
        self.aliases = aliases

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value in self.aliases:
            name = param.opts[0] if param is not None else "value"
            click.echo(f"DeprecationWarning: {name} {value} is deprecated; use {name} {self.aliases[value]}", err=True)
            return value
        return super().convert(value, param, ctx)


def renamed_option(old: str, new: str, **option: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The deprecated spelling ``old`` of the option whose parameter is ``new``: hidden, still working.

    Click warns when it is used; its value fills ``new`` unless that was given too.
    """
    dest = old.lstrip("-").replace("-", "_")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            value = kwargs.pop(dest)
            if value is not None and kwargs.get(new) is None:
                kwargs[new] = value
            return fn(*args, **kwargs)

        flag = "--" + new.replace("_", "-")
        return click.option(old, dest, default=None, hidden=True, deprecated=f"Use {flag}.", **option)(wrapper)

    return decorate


def _check_shard(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value.strip().lower() == "auto":
        return shard_from_env()
    parse_shard(value, what="--shard")
    return value


def shard_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--shard i/n`` (default 0/1) or ``--shard auto`` (a Kubernetes Indexed Job's worker: i and n
    from ``JOB_COMPLETION_INDEX`` / ``JOB_COMPLETIONS``), checked as it is parsed (a `ConfigError`,
    exit 2, naming --shard)."""
    return click.option(
        "--shard", default="0/1", show_default=True, callback=_check_shard,
        help=help + " 'auto': i and n of a Kubernetes Indexed Job (JOB_COMPLETION_INDEX, JOB_COMPLETIONS).",
    )


def vector_field_option(help: str = "Dense vector field (default: the first).") -> Callable[..., Any]:
    """``--vector-field`` (the library's ``vector_field``), with ``--field`` as its deprecated spelling."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = renamed_option("--field", "vector_field")(fn)
        return click.option("--vector-field", "vector_field", default=None, help=help)(fn)

    return decorate


def plan_options(alias_help: str | None, shard_help: str = "Any shard i/n of a sharded migration.") -> Callable[..., Any]:
    """The options that name a started migration: --collection, --target, --shard (and --alias)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = shard_option(shard_help)(fn)
        if alias_help is not None:
            fn = click.option("--alias", default=None, help=alias_help)(fn)
        fn = click.option("--target", default=None, help="Target collection [<collection>_csr].")(fn)
        return click.option("--collection", required=True, help="Source collection of the migration.")(fn)

    return decorate


def common_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the global options to a command and hand it an `App` as first argument."""

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        flags = {k: kwargs.pop(k) for k in _COMMON}
        ctx = click.get_current_context()
        ctx.meta[_DEBUG_KEY] = bool(flags["debug"])
        logging.basicConfig(
            level=logging.DEBUG if flags["debug"] else logging.WARNING,
            format="%(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        quiet_client_loggers(bool(flags["debug"]))
        app = App(flags=flags, json=bool(flags["json_out"]), debug=bool(flags["debug"]))
        try:
            return fn(app, **kwargs)
        finally:
            app.close()

    options = [
        click.option("--store", type=click.Choice(STORE_KINDS), default=None,
                     help="Vector database: milvus, qdrant or qdrant-edge [env CSR_VDB_STORE; default milvus]."),
        click.option("--uri", default=None,
                     help="File/dir of an embedded engine or a server URL [env CSR_VDB_URI; default "
                          "./csr_vdb.db for milvus, ./csr_vdb_qdrant for qdrant-edge]."),
        click.option("--token", default=None,
                     help="Milvus token / Qdrant API key (prefer env CSR_VDB_MILVUS_TOKEN / CSR_VDB_QDRANT_API_KEY)."),
        click.option("--state-dir", default=None, help="Plans, journals, reports [env CSR_VDB_STATE_DIR; default ./.csr-vdb]."),
        click.option("--device", default=None, help="Torch device: cpu, cuda, auto [env CSR_VDB_DEVICE]."),
        click.option("--config", default=None, type=click.Path(dir_okay=False),
                     help="Config file (TOML) [default ./csr-vdb.toml when present]."),
        click.option("--timeout", default=None, type=float,
                     help="Seconds one request waits for a database server [env CSR_VDB_TIMEOUT; 10]."),
        click.option("--retries", default=None, type=click.IntRange(min=0),
                     help="Retries of a request that fails transiently, with exponential backoff "
                          "[env CSR_VDB_RETRIES; 3]."),
        click.option("--json", "json_out", is_flag=True, help="Machine-readable JSON on stdout only."),
        click.option("--debug", is_flag=True, help="Show tracebacks and debug logs."),
    ]
    for opt in reversed(options):
        wrapper = opt(wrapper)
    return wrapper
