"""Proof by the real runtime: GGUF files written by ``lorashear.deploy`` loaded and run by llama.cpp
(through llama-cpp-python), compared with transformers on the same token ids. Slow; not part of the tests.

    python bench/gguf_roundtrip.py [--model demo|smollm2-135m|DIR] [--dtypes f32,f16,q8_0] [--out DIR]
                                   [--ppl-tokens 8192] [--threads 2] [--no-install]
    python bench/gguf_roundtrip.py --speed [--model ...] [--dtypes f16,q8_0] [--reps 5]

Variants of ``--model``: ``dense``; ``uniform`` — 20 % of the parameters (attention + MLP units, weight
magnitude, the same share in every layer); ``global`` — 20 % with global allocation (per-layer sizes differ:
written as llama.cpp's ``deci`` with per-layer arrays); ``global-a64`` — the same with ``--align 64``; and for
the demo model ``hand+hidden`` — a hand removal in three layers plus 8 hidden channels (non-uniform and a
hidden size that is no multiple of the head count: the explicit ``key_length`` path). Each is compressed,
saved with ``save_pruned`` (reload verified), exported with ``export_model`` per dtype.

Correctness (default): on 6 fixed prompts (the first documents of each demo validation source, ≤ 64 tokens
each) llama.cpp's logits for every position against transformers' fp32 logits of the same model: max |Δ| (and
relative to the logits' max |value|) and top-1 agreement; perplexity on the demo validation stream in
non-overlapping 128-token windows (``--ppl-tokens`` tokens per source), llama.cpp's logits vs
``lorashear.evaluate.perplexity``; and whether llama.cpp's tokenizer reproduces transformers' token ids on the
validation documents. ``--speed``: prompt processing (a 128-token prompt in one batch) and generation (32
tokens, one at a time after that prompt) tokens/s in llama.cpp, ``--threads`` threads, median of ``--reps``,
all variants interleaved in each repetition.

llama-cpp-python is installed with pip if missing (it compiles llama.cpp: minutes to tens of minutes).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HAND = {"model.layers.1.self_attn:heads": [1], "model.layers.2.self_attn:query_heads": [0],
        "model.layers.3.mlp:channels": list(range(0, 200, 2)), "model:hidden": list(range(0, 64, 8))}


def ensure_llama_cpp(install: bool) -> None:
    if importlib.util.find_spec("llama_cpp") is not None:
        return
    if not install:
        sys.exit("llama-cpp-python is not installed (pip install llama-cpp-python); --no-install was given")
    print("installing llama-cpp-python (compiles llama.cpp; this takes a while) ...", flush=True)
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", "2"))
    subprocess.run([sys.executable, "-m", "pip", "install", "llama-cpp-python"], check=True, env=env)


def make_variants(model_src: str, out: Path, dtypes: list[str], *, speed: bool, reuse: bool = False,
                  keep: set[str] | None = None) -> dict[str, dict]:
    """Compress + save_pruned + export_model for every variant; returns name -> {folder, ggufs, params, model}."""
    from lorashear.compress import compress
    from lorashear.export import save_pruned
    from lorashear.deploy import export_model
    from lorashear.groups import find_groups
    from lorashear.knowledge.estimators import magnitude
    from lorashear.loading import load_model, resolve_source
    from lorashear.prune.plan import PlanSpec, candidate_groups, make_plan
    from lorashear.trace import trace

    model, tok = load_model(model_src)
    groups = find_groups(trace(model))
    removals: dict[str, dict | None] = {"dense": None}
    for name, alloc, align in (("uniform", "uniform", None), ("global", "global", None), ("global-a64", "global", 64)):
        if keep and name not in keep:
            continue
        spec = PlanSpec(ratio=0.2, allocation=alloc, align=align)
        scores = {gid: v ** 2 for gid, v in magnitude(model, candidate_groups(groups, spec), kinds=spec.kinds).units.items()}
        removals[name] = make_plan(model, groups, spec, scores, scores_from="magnitude").removal
    if model_src == "demo" and not speed:
        removals["hand+hidden"] = HAND
    if keep:
        removals = {k: r for k, r in removals.items() if k in keep or k == "dense"}
    variants = {}
    for name, removal in removals.items():
        folder = out / name
        if removal is None:
            small, folder = model, resolve_source(model_src)
        else:
            small, report = compress(model, groups, removal)
            if not (folder / "lorashear.json").is_file():
                save_pruned(small, folder, report=report, tokenizer=tok,
                            provenance={"source": str(model_src), "method": f"bench {name}"})
        ggufs, infos = {}, {}
        for d in dtypes:
            f = out / f"{name}-{d}.gguf"
            t = time.perf_counter()
            meta = f.with_suffix(".json")
            if reuse and f.is_file() and meta.is_file():
                infos[d] = json.loads(meta.read_text())
            else:
                infos[d] = export_model(folder if removal is not None else model_src, f, format="gguf", dtype=d, force=True)
                infos[d]["export_s"] = round(time.perf_counter() - t, 2)
                meta.write_text(json.dumps(infos[d], indent=1))
            ggufs[d] = f
        variants[name] = {"folder": folder, "gguf": ggufs, "info": infos, "model": small.eval(),
                          "params": sum(p.numel() for p in small.parameters())}
        print(f"{name:12s} {variants[name]['params']:>12,} params  arch {infos[dtypes[0]]['architecture']}  "
              + "  ".join(f"{d} {infos[d]['bytes'] / 2**20:.1f} MiB ({infos[d]['export_s']} s)" for d in dtypes), flush=True)
    return variants, tok


def llama(path: Path, n_ctx: int, threads: int, logits_all: bool = True, f32_cache: bool = False):
    """llama.cpp on ``path`` through the library's one loader (``lorashear.deploy_measure.open_llama``: the CPU
    repack/AMX buffer types off unless ``--extra-bufts``). ``f32_cache``: keep K/V in f32 — the pure-f32 comparison."""
    from lorashear.deploy_measure import open_llama

    return open_llama(path, n_ctx=n_ctx, threads=threads, logits_all=logits_all, f32_cache=f32_cache,
                      extra_bufts=EXTRA_BUFTS)


EXTRA_BUFTS = False


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def correctness(args, variants, tok) -> list[dict]:
    from llama_cpp import Llama

    from lorashear.data import demo_corpus, token_stream
    from lorashear.deploy_measure import logits_of as cpp_logits, window_nll
    from lorashear.evaluate import perplexity

    corpus = demo_corpus("validation")
    prompts = []
    for src, docs in corpus.items():
        for doc in docs[:2]:
            prompts.append(tok(doc).input_ids[:64])
    streams = {src: token_stream(docs, tok)[: args.ppl_tokens] for src, docs in corpus.items()}
    window = 128
    rows = []
    tok_checked = False
    for name, v in variants.items():
        ours = {src: perplexity(v["model"], s, window).ppl for src, s in streams.items()}
        ref = [hf_logits(v["model"], p) for p in prompts]
        for d, path in v["gguf"].items():
            llm = llama(path, window, args.threads, f32_cache=d == "f32")
            if not tok_checked:  # the tokenizer in the file against transformers' on the validation documents
                docs = [doc for docs in corpus.values() for doc in docs[:50]]
                same = sum(llm.tokenize(doc.encode(), add_bos=False, special=False) == tok(doc).input_ids for doc in docs)
                print(f"tokenizer: llama.cpp reproduces transformers' ids on {same}/{len(docs)} validation documents")
                from lorashear.deploy import find_source_gguf

                src = find_source_gguf(args.model)
                if src is not None:  # the copied tokenizer against the file it was copied from, both in llama.cpp
                    orig = Llama(model_path=str(src), vocab_only=True, verbose=False)
                    same = sum(llm.tokenize(doc.encode(), add_bos=False, special=False)
                               == orig.tokenize(doc.encode(), add_bos=False, special=False) for doc in docs)
                    print(f"tokenizer: llama.cpp gives the same ids with the exported file as with {src.name} on "
                          f"{same}/{len(docs)} documents")
                    del orig
                tok_checked = True
            got = [cpp_logits(llm, p) for p in prompts]
            diff = max(float(np.abs(a - b).max()) for a, b in zip(got, ref))
            scale = max(float(np.abs(b).max()) for b in ref)
            top1 = np.mean(np.concatenate([a.argmax(-1) == b.argmax(-1) for a, b in zip(got, ref)]))
            cpp_ppl = {}
            for src, s in streams.items():
                ids = s[: (len(s) // window) * window].view(-1, window).tolist()
                total = sum(window_nll(llm, w) for w in ids)
                cpp_ppl[src] = math.exp(total / (len(ids) * (window - 1)))
            row = {"variant": name, "dtype": d, "arch": v["info"][d]["architecture"], "params": v["params"],
                   "max_abs_diff": diff, "rel_diff": diff / scale, "top1": float(top1),
                   "ppl_ours": ours, "ppl_llama_cpp": cpp_ppl}
            rows.append(row)
            mo, mc = statistics.mean(ours.values()), statistics.mean(cpp_ppl.values())
            print(f"{name:12s} {d:5s} {row['arch']:6s} max|Δlogit| {diff:.2e} (rel {diff / scale:.1e})  top-1 {top1 * 100:6.2f} %  "
                  f"ppl ours {mo:8.3f}  llama.cpp {mc:8.3f}  Δ {mc - mo:+.3f} ({(mc / mo - 1) * 100:+.2f} %)", flush=True)
            del llm
    return rows


def speed(args, variants) -> list[dict]:
    """The timing of ``lorashear.deploy_measure.measure_gguf`` (same prompt, same greedy generation, same warm-up),
    but every variant's file open at once and the repetitions interleaved across them, so a load change on the
    machine hits every variant alike."""
    from lorashear.deploy_measure import random_prompt, time_once

    n_prompt, n_gen = 128, 32
    any_info = next(iter(variants.values()))["info"]
    vocab = next(iter(any_info.values()))["n_vocab"]
    prompt = random_prompt(vocab, n_prompt)
    llms = {(name, d): llama(path, n_prompt + n_gen + 8, args.threads, logits_all=False)
            for name, v in variants.items() for d, path in v["gguf"].items()}
    pp = {k: [] for k in llms}
    tg = {k: [] for k in llms}

    def once(llm):
        return time_once(llm, prompt, n_gen)

    for llm in llms.values():
        once(llm)  # warm-up
    for _ in range(args.reps):
        for k, llm in llms.items():  # interleaved
            a, b = once(llm)
            pp[k].append(a)
            tg[k].append(b)
    rows = []
    load = os.getloadavg()[0]
    print(f"llama.cpp speed: {args.threads} threads, prompt {n_prompt} tokens (one batch), generation {n_gen} tokens, "
          f"median of {args.reps}, interleaved; load average at the end {load:.2f} on {os.cpu_count()} CPUs")
    for (name, d) in llms:
        base = (statistics.median(pp[("dense", d)]), statistics.median(tg[("dense", d)]))
        p, g = statistics.median(pp[(name, d)]), statistics.median(tg[(name, d)])
        rows.append({"variant": name, "dtype": d, "pp_tok_s": p, "tg_tok_s": g, "pp_speedup": p / base[0],
                     "tg_speedup": g / base[1], "params": variants[name]["params"]})
        print(f"{name:12s} {d:5s} {variants[name]['params']:>12,} params  pp {p:9.1f} tok/s ({p / base[0]:.2f}×)  "
              f"tg {g:8.1f} tok/s ({g / base[1]:.2f}×)", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--dtypes", default=None, help="comma list of f32,f16,q8_0,q4_0 (default: f32,f16,q8_0; --speed: f16,q8_0)")
    p.add_argument("--out", default=None, help="work folder (default: out/gguf-<model>, git-ignored)")
    p.add_argument("--ppl-tokens", type=int, default=8192, help="validation tokens per source for perplexity")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--speed", action="store_true")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--variants", default=None, help="comma list to keep (default: all)")
    p.add_argument("--no-install", action="store_true")
    p.add_argument("--extra-bufts", action="store_true",
                   help="leave llama.cpp's CPU repack/AMX buffer types on (they crash Q8_0 files on some VMs)")
    p.add_argument("--reuse", action="store_true", help="keep GGUF files (and pruned folders) from an earlier run in --out")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    global EXTRA_BUFTS
    EXTRA_BUFTS = args.extra_bufts
    ensure_llama_cpp(not args.no_install)
    import llama_cpp

    dtypes = (args.dtypes or ("f16,q8_0" if args.speed else "f32,f16,q8_0")).split(",")
    out = Path(args.out or ROOT / "out" / f"gguf-{Path(args.model).name}")
    out.mkdir(parents=True, exist_ok=True)
    print(f"llama-cpp-python {llama_cpp.__version__}; model {args.model}; dtypes {', '.join(dtypes)}; "
          f"{args.threads} threads; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    keep = set(args.variants.split(",")) if args.variants else None
    variants, tok = make_variants(args.model, out, dtypes, speed=args.speed, reuse=args.reuse, keep=keep)
    rows = speed(args, variants) if args.speed else correctness(args, variants, tok)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "llama_cpp_python": llama_cpp.__version__,
                                               "threads": args.threads, "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
