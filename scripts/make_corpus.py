#!/usr/bin/env python
"""Extract the demo corpus and instruction set from text that ships with CPython.

Nothing can be downloaded on the machines this project is built on, so the demo data is made here from
the running interpreter's own files, deterministically (no randomness: splits come from SHA-256 of a
stable key, files are gzip-compressed with mtime 0, so a re-run on the same Python writes identical bytes).

Sources (each becomes ``demo/corpus/<source>/{train,validation,test}.jsonl.gz`` with ``{"id", "text"}``):

* ``docs`` — the language reference prose in ``pydoc_data.topics`` (what ``help("assert")`` shows),
  cut into chunks of whole paragraphs (<= 3,000 characters); split 80/10/10 per chunk (it is the smallest
  source, so per-topic splits would leave a tiny validation set).
* ``docstrings`` — every module / class / function docstring of the pure-Python standard library
  (parsed with ``ast``, never imported), one document per module.
* ``code`` — the same modules' source with the docstrings removed (so the two sources do not overlap).

``docstrings`` and ``code`` share one 90/5/5 split per *module*: a module in validation is in validation for
both sources, so the model never trains on one half of a held-out module.

The instruction set (``demo/instructions/{split}.jsonl.gz``, Alpaca fields ``instruction`` / ``input`` /
``output``) is derived from the same material with the same per-module / per-topic split:

* "What does the function `json.dumps` do?" (input: its signature) -> first paragraph of its docstring;
* "Which function of the `json` module does the following?" (input: that summary) -> `json.dumps`;
* "Explain the Python topic `assert`." -> first paragraph of the topic.

Usage: ``python scripts/make_corpus.py [--out demo]`` (takes a few seconds). Writes a
``MANIFEST.json`` with per-file counts, characters and SHA-256, and the Python version used.
"""
from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import inspect
import io
import json
import os
import platform
import re
import sys
import sysconfig
from pathlib import Path

SPLITS = ("train", "validation", "test")
# Directories / files under the stdlib that are not representative library code (tests, data tables,
# vendored or deprecated trees, the pydoc topics themselves which are the "docs" source).
EXCLUDE_DIRS = {
    "site-packages", "test", "tests", "idle_test", "encodings", "lib2to3", "turtledemo", "idlelib",
    "ensurepip", "pydoc_data", "__pycache__", "lib-dynload", "__phello__", "distutils",
}
EXCLUDE_FILES = {"this.py", "antigravity.py", "entities.py"}
DOC_CHUNK_CHARS = 3000


def split_of(key: str, held_out_pct: int = 5) -> str:
    """Stable split from a key's SHA-256 (independent of Python's hash seed and file order).

    ``held_out_pct`` percent each go to validation and test, the rest to train.
    """
    bucket = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % 100
    if bucket < 100 - 2 * held_out_pct:
        return "train"
    return "validation" if bucket < 100 - held_out_pct else "test"


def stdlib_modules(stdlib: Path) -> list[tuple[str, Path]]:
    """(dotted module name, path) of the pure-Python stdlib modules we use, sorted by name."""
    out = []
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in EXCLUDE_DIRS and not d.startswith("config-"))
        for f in sorted(files):
            if not f.endswith(".py") or f in EXCLUDE_FILES or f.startswith("_sysconfigdata"):
                continue
            path = Path(root) / f
            rel = path.relative_to(stdlib).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.append((".".join(parts), path))
    return sorted(out)


def _docstring_node(body: list[ast.stmt]) -> ast.Expr | None:
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[0]
    return None


def _first_paragraph(doc: str) -> str:
    para = doc.strip().split("\n\n")[0]
    return " ".join(line.strip() for line in para.splitlines()).strip()


def _topic_summary(text: str) -> str:
    """First real paragraph of a pydoc topic: skip the title block (a line underlined with ``***``/``===``)."""
    for para in re.split(r"\n\s*\n", text):
        if re.search(r"^\s*([*=~^-])\1{3,}\s*$", para, flags=re.M) or not para.strip():
            continue
        return " ".join(line.strip() for line in para.splitlines()).strip()
    return ""


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    return f"{prefix} {node.name}({ast.unparse(node.args)}){returns}"


def parse_module(name: str, source: str) -> tuple[str, str, list[dict]]:
    """Return (docstrings text, code without docstrings, instruction records) for one module."""
    tree = ast.parse(source)
    docs: list[str] = []
    drop_lines: set[int] = set()
    records: list[dict] = []

    def visit(node: ast.AST, qual: str, kind: str) -> None:
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            return
        doc = _docstring_node(body)
        if doc is not None:
            text = inspect.cleandoc(doc.value.value).strip()
            if text:
                docs.append(text)
            drop_lines.update(range(doc.lineno, doc.end_lineno + 1))
            public = not any(p.startswith("_") for p in qual.split(".")[len(name.split(".")):])
            summary = _first_paragraph(text)
            if kind in ("function", "method", "class") and public and 20 <= len(summary) <= 400:
                what = {"function": "function", "method": "method", "class": "class"}[kind]
                ctx = _signature(node) if kind != "class" else f"class {node.name}"
                records.append({
                    "instruction": f"What does the {what} `{qual}` do?",
                    "input": ctx,
                    "output": summary,
                    "source": "docstrings",
                    "id": f"{qual}:what",
                })
                if kind == "function":
                    records.append({
                        "instruction": f"Which function of the `{name}` module does the following?",
                        "input": summary,
                        "output": f"`{qual}`",
                        "source": "docstrings",
                        "id": f"{qual}:which",
                    })
        for child in body:
            if isinstance(child, ast.ClassDef):
                visit(child, f"{qual}.{child.name}", "class")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, f"{qual}.{child.name}", "method" if kind == "class" else "function")

    visit(tree, name, "module")
    lines = source.splitlines()
    kept = [ln.rstrip() for i, ln in enumerate(lines, start=1) if i not in drop_lines]
    code = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip() + "\n"
    return "\n\n".join(docs), code, records


def doc_chunks(text: str, limit: int = DOC_CHUNK_CHARS) -> list[str]:
    """Cut a topic into chunks of whole paragraphs of at most ~``limit`` characters."""
    paras = [p.rstrip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    chunks, cur = [], ""
    for p in paras:
        if cur and len(cur) + len(p) + 2 > limit:
            chunks.append(cur)
            cur = ""
        cur = f"{cur}\n\n{p}" if cur else p
    if cur:
        chunks.append(cur)
    return chunks


def build(stdlib: Path) -> tuple[dict[str, dict[str, list[dict]]], dict[str, list[dict]]]:
    """All corpus documents (source -> split -> records) and instruction records (split -> records)."""
    from pydoc_data.topics import topics

    corpus: dict[str, dict[str, list[dict]]] = {s: {sp: [] for sp in SPLITS} for s in ("docs", "docstrings", "code")}
    instr: dict[str, list[dict]] = {sp: [] for sp in SPLITS}
    for topic in sorted(topics):
        # docs is the smallest source: split per chunk, 80/10/10, so its held-out sets are not tiny.
        for i, chunk in enumerate(doc_chunks(topics[topic])):
            corpus["docs"][split_of(f"topic:{topic}#{i}", 10)].append({"id": f"{topic}#{i}", "text": chunk})
        sp = split_of(f"topic:{topic}#0", 10)  # the instruction uses the first paragraph = chunk 0
        summary = _topic_summary(topics[topic])
        if 40 <= len(summary):
            instr[sp].append({
                "instruction": f"Explain the Python topic `{topic}`.",
                "input": "",
                "output": summary[:600].rsplit(" ", 1)[0] if len(summary) > 600 else summary,
                "source": "docs",
                "id": f"topic:{topic}",
            })
    for name, path in stdlib_modules(stdlib):
        try:
            source = path.read_text(encoding="utf-8")
            docstrings, code, records = parse_module(name, source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a file this interpreter cannot parse is simply not part of the corpus
        sp = split_of(f"module:{name}")
        if docstrings.strip():
            corpus["docstrings"][sp].append({"id": name, "text": docstrings})
        if code.strip():
            corpus["code"][sp].append({"id": name, "text": code})
        instr[sp].extend(records)
    return corpus, instr


def write_jsonl_gz(path: Path, records: list[dict]) -> str:
    """Write records atomically as gzip JSONL with mtime 0 (byte-identical re-runs); return SHA-256."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        for r in records:
            gz.write((json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "demo"),
                    help="output folder (default: the repo's demo/)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    corpus, instr = build(stdlib)
    manifest: dict = {
        "python": platform.python_version(),
        "stdlib": "<sysconfig stdlib>",
        "corpus": {},
        "instructions": {},
    }
    for source, splits in corpus.items():
        manifest["corpus"][source] = {}
        for sp, recs in splits.items():
            sha = write_jsonl_gz(out / "corpus" / source / f"{sp}.jsonl.gz", recs)
            manifest["corpus"][source][sp] = {
                "documents": len(recs), "chars": sum(len(r["text"]) for r in recs), "sha256": sha,
            }
    for sp, recs in instr.items():
        sha = write_jsonl_gz(out / "instructions" / f"{sp}.jsonl.gz", recs)
        manifest["instructions"][sp] = {"examples": len(recs), "sha256": sha}
    tmp = out / "corpus" / "MANIFEST.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / "corpus" / "MANIFEST.json")
    for source, splits in manifest["corpus"].items():
        print(source, {sp: (v["documents"], v["chars"]) for sp, v in splits.items()})
    print("instructions", {sp: v["examples"] for sp, v in manifest["instructions"].items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
