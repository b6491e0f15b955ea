"""Human renderings of the library's results (``--json`` prints the results themselves)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from csr_vdb.cli.ui import kv, table


def render_export(res: Any) -> str:
    """An `ExportResult`."""
    return kv({"rows": res.rows, "dim": res.dim, "vectors": res.path, "ids": res.ids_path, "rows/s": res.rows_per_s})


def render_train(res: Any) -> str:
    """A `TrainSummary` with the numeric figures of its training report."""
    figures = {k: v for k, v in res.report.items() if isinstance(v, (int, float))}
    out = kv({"model": res.model_dir, "rows": res.rows, "input_dim": res.input_dim, "hidden_dim": res.hidden_dim,
              "k": res.k, "epochs": res.epochs, "train_s": res.seconds, "query width": res.query_width,
              "search candidates": res.search_candidates, **figures})
    return out + ("\n" + query_width_line(res.query_width_report) if res.query_width_report else "")


def query_width_line(rep: dict[str, Any]) -> str:
    """How a model's search-query width was chosen (`csr_vdb.config.QueryWidthReport` as a dict)."""
    recalls = ", ".join(f"{w}: {r:.3f}" for w, r in sorted(rep["recalls"].items(), key=lambda kv: int(kv[0])))
    verdict = "met" if rep["met"] else "not met (widest kept)"
    return (f"query width {rep['width']} chosen for {rep['recall_floor']:.0%} of the full width's recall@10 "
            f"({rep['full_recall']:.3f} at {rep['full_width']}; floor {rep['floor']:.3f} {verdict}), "
            f"{rep['candidates']} candidates, {rep['queries']} self-queries over {rep['rows']} rows; "
            f"recall by width: {recalls}")


def render_migration(plan: Any, res: Any) -> str:
    """A `MigrationResult`; for a dry run, the plan it would carry out."""
    if res.dry_run:
        return "dry run: nothing written\n" + kv({
            "source": plan.source, "target": plan.target, "vector_field": plan.vector_field,
            "rows": res.rows_total, "would write": res.rows_written, "batch_size": plan.batch_size,
            "keep_dense": plan.keep_dense, "shard": plan.shard, "alias": plan.alias,
            "model": plan.model_dir, "plan_id": plan.plan_id})
    return kv({"source": res.source, "target": res.target, "status": res.status, "resumed": res.resumed,
               "rows written": res.rows_written, "rows done": res.rows_done,
               "skipped invalid": res.rows_skipped_invalid, "rows/s": res.rows_per_s, "avg nnz": res.avg_nnz,
               "state": res.state_dir})


def render_verify(rep: Any) -> str:
    """A `VerifyReport`, one line per problem found."""
    return kv({"source": rep.source, "target": rep.target, "ok": rep.ok,
               "rows (source/expected/target)": f"{rep.source_rows}/{rep.expected_rows}/{rep.target_rows}",
               "missing / extra ids": f"{rep.n_missing} / {rep.n_extra}",
               "payload mismatches": rep.payload_mismatches, "dense mismatches": rep.dense_mismatches,
               "sparse mismatches": f"{rep.sparse_mismatches} of {rep.sample_size}",
               "schema": "-" if rep.schema_check is None else
               "same as the source" if rep.schema_check.ok else f"{len(rep.schema_check.differences)} difference(s)",
               "recall@10 sparse vs dense": rep.recall_at_10}) + "".join(f"\nproblem: {p}" for p in rep.problems)


def render_alias(res: Any) -> str:
    """An `AliasResult` (and what its final sync wrote, when one ran)."""
    synced = f" (final sync: {res.synced} rows)" if getattr(res, "synced", None) else ""
    return f"alias '{res.alias}': {res.previous or '(new)'} -> {res.current}{synced}"


def render_sync(rep: Any) -> str:
    """A `SyncReport`: the counts of each kind of change, or that there was nothing to do."""
    head = {
        "dry-run": "dry run: nothing written; a sync would make these changes",
        "nothing to do": f"nothing to do: '{rep.target}' already matches '{rep.source}'",
        "synced": f"synced '{rep.source}' -> '{rep.target}'",
    }[rep.status]
    return head + "\n" + kv({
        "inserts": rep.inserts, "re-encodes": rep.reencodes, "payload updates": rep.payload_updates,
        "deletes": rep.deletes, "already applied": rep.already_applied, "skipped invalid": rep.skipped_invalid,
        "rows scanned": rep.rows_scanned, "rows read": rep.rows_read, "mode": rep.mode,
        **({"watermark": rep.watermark} if rep.changed_field else {}), "seconds": rep.seconds})


def render_status(rep: Any) -> str:
    """A `StatusReport`: its fields, then the generations of the source as a table."""
    data = rep.model_dump(mode="json")
    gens = data.pop("generations")
    text = kv(data)
    if gens:
        rows = [["*" if g["live"] else "", g["target"], g["model_sha256"][:12], g["rows"], g["state"], g["model_dir"]]
                for g in gens]
        text += "\n\ngenerations (* = the alias points here)\n" + table(
            rows, ["", "collection", "model", "rows", "state", "model dir"])
    return text


def eval_table(rep: Any) -> str:
    """The dense / sparse / sparse+rerank / sparse+re-score comparison table of a `CollectionEvalReport`."""
    rows = [
        ["dense", 1.0, rep.dense_bytes_per_vector, rep.latency_ms["dense"]],
        ["sparse", rep.recall_sparse, rep.sparse_bytes_per_vector, rep.latency_ms["sparse"]],
        [f"sparse+rerank@{rep.candidates}", rep.recall_rerank, rep.sparse_bytes_per_vector, rep.latency_ms["rerank"]],
        [f"sparse+re-score@{rep.candidates} (codes only)", rep.recall_rescore, rep.sparse_bytes_per_vector,
         rep.latency_ms["rescore"]],
    ]
    head = f"{rep.queries} sampled rows of '{rep.source}' as queries; reference: dense search; target '{rep.target}'"
    if rep.query_width is not None:
        head += f"\nsearch query width {rep.query_width}, {rep.candidates} candidates re-scored"
    if rep.query_width_report:
        head += "\n" + query_width_line(rep.query_width_report)
    return head + "\n" + table(rows, ["mode", f"recall@{rep.top_k}", "bytes/vector", "ms/query"])


def _label(payload: dict[str, Any] | None, show: str | None, width: int = 70) -> str:
    if not payload:
        return ""
    key = show if show else next((k for k in ("name", "title", "text") if k in payload), next(iter(payload), None))
    text = str(payload.get(key, "")) if key else ""
    return text if len(text) <= width else text[: width - 1] + "…"


def render_search(res: dict[str, Any], show: str | None = None) -> str:
    """Search results: per query, one block per mode (rank, score, id, payload field ``show``)."""
    lines: list[str] = []
    for qi, q in enumerate(res["queries"]):
        lines.append(f"query: {q}")
        for m, per_q in res["results"].items():
            lines.append(f"  [{m}]  ({res['ms'][m] / max(1, len(res['queries'])):.1f} ms/query)")
            for rank, h in enumerate(per_q[qi], 1):
                lines.append(f"    {rank:>2}. {h['score']:8.4f}  {h['id']}  {_label(h['payload'], show)}")
        lines.append("")
    return "\n".join(lines).rstrip()


def render_demo(r: dict[str, Any]) -> str:
    """The demo's report: the run, the side-by-side searches, the quality/size tables."""
    from csr_vdb.collection_eval import CollectionEvalReport

    lines = [
        f"demo: {r['rows']} stdlib docstrings, {r['dim']}-d MiniLM, {r['store']} at {r['uri']}",
        f"model: h={r['model']['hidden_dim']} k={r['model']['k']} epochs={r['model']['epochs']} "
        f"trained in {r['model']['train_s']} s",
        f"migration: {r['migration']['rows_written']} rows at {r['migration']['rows_per_s']} rows/s; "
        f"verify ok={r['verify']['ok']}; alias {r['alias']['name']} -> {r['alias']['points_to']}",
        "",
    ]
    for s in r["searches"]:
        lines.append(f"query: {s['query']}")
        lines.append(table([[m, ", ".join(str(n) for n in s[m])] for m in ("dense", "sparse", "rerank")],
                           ["mode", "top 3"]))
        lines.append("")
    lines.append(eval_table(CollectionEvalReport(**r["eval"])))
    lines.append("")
    lines.append(table([[c["k"], c["bytes_per_vector"], c["recall"], c.get("recall_rescore", "-"), c["recall_rerank"],
                         c["pca_recall"]] for c in r["quality_vs_k"]],
                       ["k", "bytes/vector", "recall@10", "+re-score", "+rerank", "PCA same bytes"]))
    lines.append(f"\nplot: {r['plot']}   report: {Path(r['plot']).parent / 'report.json'}   total {r['total_s']} s")
    return "\n".join(lines)
