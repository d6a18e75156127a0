"""Knowledge recovery of a pruned model: rounds of LoRA training on a data mixture that follows where the pruned
model lags behind its dense origin (stage 1), then instruction tuning with early stopping (stage 2).

``recover`` is the one library call behind ``lorashear recover``, the registry's ``recover`` job and the app.
Output folder::

    OUT/model/            the recovered model (LoRA merged, ``save_pruned``; provenance chained to the pruned model
                          and its dense origin)
    OUT/trajectory.json   per round: weights, per-source loss / perplexity / deviation from dense, tokens used
    OUT/report.json       perplexity per source (both protocols) before and after, instruction validation loss
    OUT/run.json          settings and status
    OUT/checkpoints/      step-N/ after every round and every instruction evaluation (N: optimizer steps over both
                          stages; the newest two kept) and instruct-best.safetensors; ``resume=True`` continues exactly

The run folder, its checkpoints, the batch seeds, the NaN stop and the training step are ``lorashear.runs``'.

Rule and defaults: ``docs/recovery.md``. Stage 1 may distil from a teacher (``lorashear.distill``: ``distill``,
``teacher``, …) and ``train="full"`` trains every parameter of the pruned model instead of LoRA adapters.

Under ``accelerate launch --num_processes N`` training is data-parallel (``lorashear.parallel``): every process
draws the same global batch and trains on its rows, LoRA gradients are all-reduced, so every process holds the same
adapters and computes the same per-source losses, hence the same mixture weights; process 0 alone computes the dense
reference, evaluates, and writes checkpoints, the model and the reports.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from .. import distill, runs
from ..errors import LorashearError
from ..jsonio import write_json_atomic
from .mixture import update_weights
from .settings import MIXTURES, RecoverSettings  # noqa: F401 (MIXTURES: re-exported for callers)

RUN_FORMAT = "lorashear.recover-run/1"
INSTRUCT_STREAM = 10**9  # the instruction stage's batches: runs.batch_seed(seed, INSTRUCT_STREAM + its step)
Progress = Callable[[float, str], None]
Metric = Callable[[int, dict], None]


# ------------------------------------------------------------------------------------------------ inputs
def _sources(st: RecoverSettings) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(train, validation) texts per source; every source must have a validation split."""
    from ..data import load_sources, parse_data_spec

    train = load_sources(list(st.data), split="train")
    val: dict[str, list[str]] = {}
    for spec in st.data:
        if spec == "demo" or spec.startswith("demo:"):
            val.update(load_sources(["demo"], split="validation"))
    for spec in st.val_data:
        name, _, _ = parse_data_spec(spec)
        if name not in train:
            raise LorashearError(f"validation source {name!r} has no training source of that name (sources: {', '.join(train)})")
        val.update(load_sources([spec]))
    missing = [s for s in train if s not in val]
    if missing:
        raise LorashearError(f"source(s) {', '.join(missing)} have no validation split: give --val NAME=PATH for each")
    return train, {s: val[s] for s in train}


def check_origin(pruned_dir: Path, side: dict | None, dense: Any) -> None:
    """The dense model must be the pruned model's origin: same class, and the parameter count the sidecar recorded
    before pruning, and every pruned tensor no larger than the dense one."""
    from ..evaluate import count_parameters

    if side is None:
        raise LorashearError(f"{pruned_dir}: not a pruned model (no lorashear.json sidecar)")
    n = count_parameters(dense)
    before = side.get("params_before")
    shapes = {k: list(v.shape) for k, v in dense.state_dict().items()}
    bigger = [k for k, s in (side.get("param_shapes") or {}).items()
              if k in shapes and (len(s) != len(shapes[k]) or any(a > b for a, b in zip(s, shapes[k])))]
    src = (side.get("provenance") or {}).get("source")
    if type(dense).__name__ != side.get("model_class") or (before is not None and before != n) or bigger:
        raise LorashearError(f"the dense model is not the origin of {pruned_dir}: the sidecar says it was pruned from a "
                             f"{side.get('model_class')} with {before:,} parameters ({src or 'source unknown'}); "
                             f"the given dense model is a {type(dense).__name__} with {n:,}")


# ----------------------------------------------------------------------------------------------- the run
def recover(pruned: str | Path, out: str | Path, settings: RecoverSettings | None = None, *, dense: str | Path | None = None,
            resume: bool = False, progress: Progress | None = None, metric: Metric | None = None, **overrides: Any) -> dict:
    """Recover ``pruned`` (a folder written by ``lorashear prune`` / ``save_pruned``) against ``dense`` (default: the
    source the sidecar names) into ``out``; returns the report."""
    from ..export import read_sidecar
    from ..loading import preflight
    from ..settings import SettingsError

    st = replace(settings, **overrides) if settings is not None else RecoverSettings(**overrides)
    pruned, out = Path(pruned), Path(out)
    inputs = {"pruned": str(pruned), "data": st.data, "seq_len": st.seq_len}
    errors = preflight(inputs)  # paths, configs and data specs before anything is loaded or written
    if errors:
        raise SettingsError(errors)
    side = read_sidecar(pruned)
    if dense is None:
        dense = (side or {}).get("provenance", {}).get("source")
        if not dense:
            raise LorashearError(f"{pruned}: the sidecar does not name the dense model; give --dense")
    errors = preflight({"dense": str(dense)})
    if errors:
        raise SettingsError(errors)
    distill.check_teacher(st.teacher)  # a teacher folder that cannot load: refused before any work
    folder = runs.open_run(out, RUN_FORMAT, st.to_dict(), resume=resume, what="recovery", pruned=str(pruned),
                           dense=str(dense), defaults=RecoverSettings().to_dict())
    from .. import parallel

    acc = parallel.accelerator(st.device)
    parallel.rows_per_micro_batch(st.batch_size, acc)  # a batch that does not split: one line, now
    acc.wait_for_everyone()  # every process checked the folder before process 0 writes into it
    main = acc.is_main_process
    progress = progress if progress and main else (lambda f, s: None)
    metric = metric if metric and main else (lambda step, values: None)
    with folder.running(main):
        report = _run(pruned, side, Path(dense) if str(dense) != "demo" else dense, out, st, resume, progress, metric,
                      acc)
        if report.get("teacher"):  # run.json names the teacher (its settings name only its kind)
            folder.info["teacher"] = {k: v for k, v in report["teacher"].items() if k != "eval"}
        return report


def _per_source(model: Any, tok: Any, val: dict[str, list[str]], st: RecoverSettings) -> dict[str, float]:
    """Mean next-token loss (nats) per source on its validation tokens (128-token windows)."""
    from ..evaluate import evaluate_perplexity

    rows = evaluate_perplexity(model, tok, val, protocols=("short",), max_tokens=st.val_tokens)
    return {r.source: r.nll for r in rows}


def _run(pruned: Path, side: dict | None, dense_src: Any, out: Path, st: RecoverSettings, resume: bool,
         progress: Progress, metric: Metric, acc: Any = None) -> dict:
    from .. import parallel
    from ..data import Mixture, texts_for_tokens
    from ..adapters import add_lora
    from ..evaluate import perplexity_summary
    from ..loading import load_model, pick_device

    acc = acc or parallel.Solo()
    main = acc.is_main_process
    t0 = time.time()
    device = acc.device if acc.distributed else pick_device(st.device)[0]
    progress(0.01, "loading the pruned and the dense model")
    model, tok = load_model(pruned, device=device)
    train, val = _sources(st)
    instr = _instructions(st, tok, model) if st.instructions and st.instruct_steps > 0 else None
    ref_file = out / "dense_loss.json"
    ref: dict[str, float] | None = None
    if resume and ref_file.is_file():
        ref = json.loads(ref_file.read_text())
    elif main:  # one process loads the dense model; the others read its losses
        dense, _ = load_model(dense_src, device=device)
        check_origin(pruned, side, dense)
        progress(0.03, "dense per-source validation loss")
        ref = _per_source(dense, tok, val, st)
        del dense
        write_json_atomic(ref_file, ref)
    acc.wait_for_everyone()
    if ref is None:
        if not ref_file.is_file():
            raise LorashearError(f"{ref_file}: process 0 wrote no dense losses (is {out} on a folder every process sees?)")
        ref = json.loads(ref_file.read_text())
    # the final evaluation reads the whole validation split (up to eval_tokens per source), not the val_tokens
    # prefix the rounds steer by: the same tokens the dense model and the pruning run were evaluated on
    evals = {s: texts_for_tokens(t, tok, st.eval_tokens) for s, t in val.items()} if st.eval_tokens else val
    val = {s: texts_for_tokens(t, tok, st.val_tokens) for s, t in val.items()}
    need = st.tokens + st.seq_len
    train = {s: texts_for_tokens(t, tok, need, seed=st.seed + i) for i, (s, t) in enumerate(train.items())}
    packed = Mixture(train, name="recovery data").pack(tok, st.seq_len, model=model)
    if main:
        progress(0.05, "evaluating the pruned model")
    before = perplexity_summary(model, tok, evals, st.eval_protocols, st.eval_tokens) if main else {}
    per_batch = st.batch_size * st.seq_len
    total_steps = st.tokens // per_batch
    teacher, teacher_info, stage1_loss = None, None, runs.causal_lm_loss
    if st.distill > 0:
        teacher, teacher_info = _teacher(st, dense_src, packed, model, device, total_steps, acc, progress)
        if main:
            teacher_info["eval"] = distill.cached_eval(
                teacher_info, {"val_data": list(st.val_data), "data": list(st.data), "eval_tokens": st.eval_tokens,
                               "eval_protocols": list(st.eval_protocols)},
                lambda: perplexity_summary(teacher, tok, evals, st.eval_protocols, st.eval_tokens))
        stage1_loss = distill.loss_fn(teacher, st.distill, pure=st.pure_kd, temperature=st.kd_temperature,
                                      top_k=st.kd_top_k)
    if st.train == "full":  # every parameter of the pruned model, trained and checkpointed as a whole
        peft_model = model.train().requires_grad_(True)
        changed: tuple = tuple(peft_model.parameters())
    else:
        peft_model, changed = add_lora(model, st.lora_r, st.lora_alpha, st.lora_targets, st.seed), ()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=st.lr)
    trained = acc.prepare(peft_model)  # DDP under accelerate launch: trained gradients all-reduced

    def train_step(batch: dict, step: int, loss_fn: runs.LossFn = runs.causal_lm_loss) -> float:
        # --lr-schedule decays over stage 1's steps (0 .. total_steps - 1); stage 2's steps come after, at --lr
        runs.set_lr(opt, runs.scheduled_lr(st.lr, st.lr_schedule, step, 0, total_steps) if step < total_steps else st.lr)
        return runs.train_step(trained, opt, batch, step, loss_fn=loss_fn, acc=acc, out=out)

    names = list(train)
    state = {"stage": 1, "round": 0, "step": 0, "tokens": 0, "weights": {s: 1.0 / len(names) for s in names},
             "trajectory": [], "instruct": {"step": 0, "best": None, "bad_evals": 0, "history": [], "stopped": None}}
    found = runs.resume_latest(out, peft_model, opt, progress) if resume else None
    if found is not None:
        state = found[1]["recover"]
    # ---------------------------------------------------------------- stage 1: rounds on the adaptive mixture
    while state["stage"] == 1:
        loss = _per_source(peft_model, tok, val, st)
        dev = {s: loss[s] - ref[s] for s in names}
        row = {"round": state["round"], "tokens": state["tokens"], "weights": dict(state["weights"]),
               "loss": loss, "ppl": {s: math.exp(v) for s, v in loss.items()}, "deviation": dev}
        state["trajectory"].append(row)
        metric(state["step"], {**{f"deviation_{s}": v for s, v in dev.items()},
                               **{f"weight_{s}": v for s, v in state["weights"].items()}})
        done = state["step"] >= total_steps or (st.stop_deviation is not None and max(dev.values()) < st.stop_deviation)
        if done:
            row["stop"] = "token budget" if state["step"] >= total_steps else f"every deviation < {st.stop_deviation}"
            state["stage"] = 2 if instr is not None else 3
            if main:
                _save_ckpt(out, state, peft_model, opt, changed)
            break
        if st.mixture == "dynamic":
            state["weights"] = update_weights(state["weights"], dev, eta=st.eta, floor=st.floor)
            row["weights_next"] = dict(state["weights"])
        n = min(st.round_steps, total_steps - state["step"])
        peft_model.train()
        for _ in range(n):
            ids, _ = packed.sample(st.batch_size, seed=runs.batch_seed(st.seed, state["step"]), weights=state["weights"])
            train_step({"input_ids": ids.to(device), "labels": ids.to(device)}, state["step"], stage1_loss)
            state["step"] += 1
            state["tokens"] += per_batch
        state["round"] += 1
        progress(0.1 + 0.55 * state["step"] / max(total_steps, 1),
                 f"round {state['round']}: {state['tokens']:,}/{st.tokens:,} tokens, max deviation {max(dev.values()):.3f}")
        if main:
            _save_ckpt(out, state, peft_model, opt, changed)
    stage1_loss = teacher = None  # distillation is stage 1's: the teacher's memory is free from here
    if main:
        write_json_atomic(out / "trajectory.json", {"format": "lorashear.recovery-trajectory/1", "reference_loss": ref,
                                                    "mixture": st.mixture, "eta": st.eta, "floor": st.floor,
                                                    "rounds": state["trajectory"]})
    # ---------------------------------------------------------------- stage 2: instruction tuning
    if state["stage"] == 2:
        _instruct(peft_model, opt, instr, state, st, out, device, progress, metric, train_step, acc, changed)
    if not main:  # process 0 merges, saves and evaluates; the others are done
        return {"main": False, "process": acc.process_index, "rounds": state["trajectory"],
                "instruct": state["instruct"]}
    progress(0.85, "merging and saving")
    merged = peft_model.merge_and_unload() if st.train == "lora" else peft_model.eval()
    from ..compress import CompressReport
    from ..export import save_pruned

    n_params = sum(p.numel() for p in {id(p): p for p in merged.parameters()}.values())
    creport = CompressReport(removed=(side or {}).get("removed", {}), params_before=(side or {}).get("params_before") or n_params,
                             params_after=n_params, layer_sizes=(side or {}).get("layer_sizes", {}))
    provenance = {"method": "recover", "source": str(dense_src), "pruned_model": str(pruned),
                  "pruned_provenance": (side or {}).get("provenance", {}), "settings": st.to_dict()}
    save_pruned(merged, out / "model", report=creport, tokenizer=tok, provenance=provenance)
    progress(0.9, "evaluating the recovered model")
    after = perplexity_summary(merged, tok, evals, st.eval_protocols, st.eval_tokens)
    report = {"format": "lorashear.recovery-report/1", "pruned": str(pruned), "dense": str(dense_src),
              "settings": st.to_dict(), "device": str(device), "threads": torch.get_num_threads(),
              "seconds": round(time.time() - t0, 1), "reference_loss": ref, "eval_before": before, "eval_after": after,
              "rounds": state["trajectory"], "tokens_stage1": state["tokens"], "instruct": state["instruct"],
              "processes": acc.num_processes, "gradient_accumulation_steps": acc.gradient_accumulation_steps,
              "mixed_precision": acc.mixed_precision, "train": st.train, "teacher": teacher_info}
    write_json_atomic(out / "report.json", report)
    progress(1.0, "done")
    return report


# ------------------------------------------------------------------------------------------------ teacher
def _teacher(st: RecoverSettings, dense_src: Any, packed: Any, model: Any, device: Any, steps: int, acc: Any,
             progress: Progress) -> tuple[Any, dict]:
    """The distillation teacher of stage 1 (``lorashear.distill``): the dense model, the dense model after the
    same LoRA budget on the recovery sources (uniform mixture; cached), or a folder. The student is the
    compressed model, so no teacher shares its base: the teacher is one separate copy, loaded once. Under
    accelerate process 0 trains (or finds) a ``finetuned`` teacher first; the others then read it from the cache."""
    from ..loading import load_model

    first = acc.is_main_process or st.teacher != "finetuned"

    def build() -> tuple[Any, dict]:
        progress(0.04, f"distillation teacher: {st.teacher}")
        return distill.build_teacher(st.teacher, lambda: load_model(dense_src, device=device)[0], packed=packed,
                                     budget=distill.Budget.of(st, steps=steps), device=device,
                                     vocab=distill.output_size(model),
                                     dtype=next(model.parameters()).dtype, progress=lambda f, s: progress(0.04, s))

    built = build() if first else None
    acc.wait_for_everyone()
    return built if built is not None else build()


# ---------------------------------------------------------------------------------------- instruction stage
def _instructions(st: RecoverSettings, tok: Any, model: Any) -> dict:
    from ..data import demo_instructions, load_instructions, tokenize_instructions

    if st.instructions == "demo":
        train, val = demo_instructions("train"), demo_instructions("validation")
    else:
        path = Path(st.instructions)
        if not path.exists():
            raise LorashearError(f"{path}: no such instruction file")
        examples = load_instructions(path)
        if len(examples) < 2:
            raise LorashearError(f"{path}: needs at least 2 instruction examples (a validation part is split off)")
        k = max(1, min(len(examples) // 10, st.instruct_val_examples))
        train, val = examples[k:], examples[:k]
    return {"train": tokenize_instructions(train, tok, st.instruct_max_length, model=model),
            "val": tokenize_instructions(val[: st.instruct_val_examples], tok, st.instruct_max_length, model=model),
            "pad": tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)}


def _instruct_loss(model: Any, instr: dict, device: Any, batch_size: int) -> float:
    from ..data import collate_instructions

    model.eval()
    tot, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(instr["val"]), batch_size):
            b = collate_instructions(instr["val"][i:i + batch_size], instr["pad"])
            logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device), use_cache=False).logits
            labels = b["labels"][:, 1:].to(device)
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100, reduction="sum")
            tot += float(nll)
            n += int((labels != -100).sum())
    model.train()
    return tot / max(n, 1)


def _instruct(peft_model: Any, opt: Any, instr: dict, state: dict, st: RecoverSettings, out: Path, device: Any,
              progress: Progress, metric: Metric, train_step: Callable[[dict, int], float] | None = None,
              acc: Any = None, changed: tuple = ()) -> None:
    """LoRA on the instruction set (prompt tokens carry no loss); evaluation every ``instruct_eval_every`` steps;
    stop after ``instruct_patience`` evaluations without improvement and keep the best adapters."""
    from .. import parallel
    from ..data import collate_instructions

    acc = acc or parallel.Solo()
    main = acc.is_main_process
    train_step = train_step or (lambda batch, step: runs.train_step(peft_model, opt, batch, step, acc=acc, out=out))
    ins = state["instruct"]
    if ins["best"] is None:
        first = _instruct_loss(peft_model, instr, device, st.batch_size)
        ins["history"].append({"step": 0, "val_loss": first})
        ins["best"] = {"step": 0, "val_loss": first}
        if main:
            _save_best(out, peft_model, changed)
    g_n = len(instr["train"])
    peft_model.train()
    while ins["step"] < st.instruct_steps and ins["stopped"] is None:
        gen = torch.Generator().manual_seed(runs.batch_seed(st.seed, INSTRUCT_STREAM + ins["step"]))
        pick = torch.randint(0, g_n, (st.batch_size,), generator=gen).tolist()
        b = collate_instructions([instr["train"][i] for i in pick], instr["pad"])
        train_step({k: v.to(device) for k, v in b.items()}, state["step"] + ins["step"])
        ins["step"] += 1
        if ins["step"] % st.instruct_eval_every == 0 or ins["step"] == st.instruct_steps:
            v = _instruct_loss(peft_model, instr, device, st.batch_size)
            ins["history"].append({"step": ins["step"], "val_loss": v})
            metric(state["step"] + ins["step"], {"instruct_val_loss": v})
            if v < ins["best"]["val_loss"]:
                ins["best"] = {"step": ins["step"], "val_loss": v}
                ins["bad_evals"] = 0
                if main:
                    _save_best(out, peft_model, changed)
            else:
                ins["bad_evals"] += 1
                if ins["bad_evals"] >= st.instruct_patience:
                    ins["stopped"] = f"early stop at step {ins['step']}: no improvement in {st.instruct_patience} evaluations"
            progress(0.65 + 0.2 * ins["step"] / st.instruct_steps, f"instruction step {ins['step']}: validation loss {v:.3f}")
            if main:
                _save_ckpt(out, state, peft_model, opt, changed)
    # keep the best adapters
    from safetensors.torch import load_file

    acc.wait_for_everyone()  # process 0 wrote them
    best = load_file(str(out / "checkpoints" / "instruct-best.safetensors"))
    params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for n, t in best.items():
            params[n].copy_(t.to(params[n].device))
    state["stage"] = 3


def _save_best(out: Path, peft_model: Any, changed: tuple = ()) -> None:
    """The adapters (and, training in full, every ``changed`` tensor) of the best instruction evaluation
    (``checkpoints/instruct-best.safetensors``, atomic)."""
    from safetensors.torch import save_file

    (out / runs.CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    tmp = out / runs.CHECKPOINTS / ".instruct-best.tmp"
    save_file(runs.checkpoint_tensors(peft_model, changed), str(tmp))
    os.replace(tmp, out / runs.CHECKPOINTS / "instruct-best.safetensors")


# ------------------------------------------------------------------------------------------- checkpoints
def _save_ckpt(out: Path, state: dict, peft_model: Any, opt: Any, changed: tuple = ()) -> Path:
    """``checkpoints/step-N`` (``lorashear.runs``), N = optimizer steps taken over both stages; ``changed``: the
    base tensors trained in full."""
    return runs.save_checkpoint(out, state["step"] + state["instruct"]["step"], peft_model, opt, {"recover": state},
                                changed=changed)
