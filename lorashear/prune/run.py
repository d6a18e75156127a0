"""One pruning run: load → groups → LoRA → train with the pruning optimizer → compress → save → evaluate.

``prune`` is the one library call behind ``lorashear prune``, the registry's ``prune`` job and the app's form.
Its output folder::

    OUT/model/          the compressed model (``save_pruned``, LoRA merged; sidecar names method, plan, settings)
    OUT/plan.json       the plan (target, exact parameter counts, units per group, units per period)
    OUT/report.json     the run report: per-step loss and sparsity, removed units per layer and kind over time,
                        parameters before/after, perplexity before/after per source (both protocols), latency
    OUT/run.json        settings and status (a different run is never written into the same folder)
    OUT/checkpoints/    step-N/ folders, the newest two kept; ``resume=True`` continues from the newest

With ``train="full"`` the run trains LoRA until the structure is final, then merges it and trains every parameter of
the masked model (``full.py``); checkpoints after that switch hold every parameter and say so. ``train="auto"`` (the
default) resolves to full or lora once the model is loaded (``settings.train_mode``: full for at most 0.5 B
parameters when steps follow the final structure); the report records the mode, what was asked and why.

With ``distill > 0`` every method trains on next-token loss + KL from a teacher (``lorashear.distill``; the
default teacher is the dense model after the same LoRA budget, ``finetune_dense``'s model, cached on disk).

Data order is a function of (seed, step) only, so a run resumed from a checkpoint draws exactly the batches the
uninterrupted run would have drawn, and (on CPU, same thread count) ends with the same weights.

Under ``accelerate launch --num_processes N`` the run is data-parallel (``lorashear.parallel``): every process
trains on its rows of the same global batch, the LoRA gradients are all-reduced, every process applies the same
optimizer step, and process 0 alone evaluates, writes run.json, checkpoints, the plan, the model and the report.
A checkpoint does not depend on the number of processes: a run can resume with another N.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from .. import distill, runs
from ..adapters import add_lora
from ..jsonio import write_json_atomic
from .full import FULL, to_full
from .methods import get_method, prepare_method
from .plan import PlanSpec, count_removed, parse_layers
from .settings import PruneSettings, method_options, train_mode

RUN_FORMAT = "lorashear.prune-run/1"
REPORT_FORMAT = "lorashear.prune-report/1"
Progress = Callable[[float, str], None]
Metric = Callable[[int, dict], None]


# --------------------------------------------------------------------------------------------- the run
def prune(model: str | Path, out: str | Path, settings: PruneSettings | None = None, *, resume: bool = False,
          progress: Progress | None = None, metric: Metric | None = None, **overrides: Any) -> dict:
    """Prune ``model`` (a model folder, ``demo``, or anything ``load_model`` takes) into ``out``; returns the
    run report. ``overrides`` are ``PruneSettings`` fields. The run folder's rules (refusals, resume, status)
    are ``lorashear.runs``'."""
    from .. import parallel

    settings = replace(settings, **overrides) if settings is not None else PruneSettings(**overrides)
    out = Path(out)
    _preflight(model, settings)
    distill.check_teacher(settings.teacher)  # a teacher folder that cannot load: refused before any work
    acc = parallel.accelerator(settings.device)
    if settings.steps > 0:
        parallel.rows_per_micro_batch(settings.batch_size, acc)  # a batch that does not split: one line, now
    folder = runs.open_run(out, RUN_FORMAT, settings.to_dict(), resume=resume, model=str(model),
                           defaults=PruneSettings().to_dict())  # every process checks
    acc.wait_for_everyone()  # ... before process 0 writes
    main = acc.is_main_process
    progress = progress if progress and main else (lambda f, s: None)
    metric = metric if metric and main else (lambda step, values: None)
    with folder.running(main):
        report = _run(model, out, settings, resume, progress, metric, acc)
        if report.get("teacher"):  # run.json names the teacher (its settings name only its kind)
            folder.info["teacher"] = {k: v for k, v in report["teacher"].items() if k != "eval"}
        return report


def _preflight(model: Any, st: PruneSettings) -> None:
    """Refuse in one line, before anything is loaded, traced or written, what the paths, configs and data specs
    alone show to be wrong (a missing or non-causal-LM model, a data file that is not there, a report that is not
    there, a sequence length beyond the model's context)."""
    from ..loading import preflight
    from ..settings import SettingsError

    errors = preflight({"model": str(model) if isinstance(model, (str, Path)) else None, "data": st.data,
                        "seq_len": st.seq_len})
    errors.update({"eval_data": msg for msg in preflight({"data": st.eval_data}).values()})
    if st.knowledge and not Path(st.knowledge).is_file():
        errors["knowledge"] = f"knowledge report not found: {st.knowledge}"
    if errors:
        raise SettingsError(errors)


def _run(source: Any, out: Path, st: PruneSettings, resume: bool, progress: Progress, metric: Metric,
         acc: Any = None) -> dict:
    from .. import parallel
    from ..evaluate import count_parameters
    from ..loading import load_model, pick_device
    from ..groups import find_groups
    from ..trace import trace

    acc = acc or parallel.Solo()
    main = acc.is_main_process
    t0 = time.time()
    progress(0.01, "loading the model")
    device = acc.device if acc.distributed else pick_device(st.device)[0]
    model, tok = load_model(source, device=device)
    train, train_reason = train_mode(st, count_parameters(model))  # the base model as loaded, before LoRA
    progress(0.02, f"training after the structure is final: {train_reason}")
    # the teacher is built from the dense model as loaded (a method's prepare and the run change this one in place)
    dense_copy = distill.snapshot(model) if st.distill > 0 and st.teacher in ("dense", "finetuned") else None
    torch.manual_seed(st.seed)
    method = get_method(st.method)
    method_info: dict[str, Any] = {"method": method.name, "summary": method.summary,
                                   "options": {k: getattr(st, k) for k in method_options(method.name)}, "calibration_tokens": 0}
    method_info.update(prepare_method(method, model, st, tok))  # FLAP's bias fields; --reconstruct's dense reference
    progress(0.03, "tracing groups")
    groups = find_groups(trace(model))
    n_layers = getattr(model.config, "num_hidden_layers", None) or 1 + max((g.layer for g in groups if g.layer is not None), default=0)
    spec = PlanSpec(ratio=st.ratio, kinds=st.kinds, allocation=st.allocation, layers=parse_layers(st.layers, n_layers),
                    align=st.align, protected=_protected(st, model, groups))
    packed, eval_sources = _data(st, tok, model)
    params_before = count_parameters(model)
    before_eval = _evaluate(model, tok, eval_sources, st, progress, 0.05, "dense") if main else {}
    teacher, teacher_info = None, None
    if st.distill > 0:
        teacher, teacher_info = _teacher(st, dense_copy, packed, model, device, acc, progress)
        dense_copy = None
        if main:
            teacher_info["eval"] = (before_eval if teacher_info["kind"] == "dense"
                                    else _teacher_eval(teacher, teacher_info, tok, eval_sources, st, progress, 0.07))
    plan0 = None
    if method.setup is not None:  # one-shot methods: scores on the dense model, the plan, any compensation
        progress(0.08, f"{method.name}: scoring units on the dense model")
        plan0, info = method.setup(model, groups, spec, st, tok)
        method_info.update(info)
    peft_model = add_lora(model, st.lora_r, st.lora_alpha, st.lora_targets, st.seed)
    opt = method.optimizer(peft_model, groups, spec, st, plan0)
    full_from = _full_from(st, opt, train)  # --train full: the step every parameter trains from (None: LoRA throughout)
    decay_from = None if st.lr_schedule == "constant" else st.final_step()  # checked by the settings: steps follow it
    # what trains: the PEFT model under the pruning optimizer, after the switch the merged model under FullTraining
    student, active = peft_model, opt
    start, history = 0, {"steps": [], "events": []}
    ck = runs.latest_checkpoint(out) if resume else None
    if ck is not None and _trained_in_full(ck):  # written after the switch: switch first, then load every parameter
        student, active = to_full(peft_model, opt, st.lr)
    found = runs.resume_latest(out, student, active, progress) if resume else None
    if found is not None:
        start, history = found[0], found[1]["history"]
    counter_cache: dict[str, int] = {}

    def removed_params() -> int:
        key = json.dumps(opt.removal(), sort_keys=True)
        if key not in counter_cache:
            counter_cache[key] = count_removed(model, groups, opt.removal())
        return counter_cache[key]

    trained = acc.prepare(student) if st.steps > start else student  # DDP: trained grads all-reduced
    student.train()
    loss_fn = (distill.loss_fn(teacher, st.distill, pure=st.pure_kd, temperature=st.kd_temperature, top_k=st.kd_top_k)
               if teacher is not None else runs.causal_lm_loss)
    for t in range(start, st.steps):
        if t == full_from and active is opt:  # the structure is final: merge LoRA, train every parameter
            if opt.plan is None or opt.removal() != {g: u for g, u in opt.plan.removal.items() if u}:
                raise RuntimeError(f"--train full at step {t}: the zero set is not the plan's yet")
            student, active = to_full(peft_model, opt, st.lr)
            opt.note("LoRA merged into the base weights; every parameter trains from here (--train full)", t)
            trained = acc.prepare(student)
            student.train()
        ids, _ = packed.sample(st.batch_size, seed=runs.batch_seed(st.seed, t))  # the same global batch everywhere
        ids = ids.to(device)
        if decay_from is not None:  # --lr-schedule: the decay spans the steps after the structure is final
            runs.set_lr(active, runs.scheduled_lr(st.lr, st.lr_schedule, t, decay_from, st.steps))
        # the same step on every process: same gradients, same weights, same zero set
        loss_value = runs.train_step(trained, active, {"input_ids": ids, "labels": ids}, t, loss_fn=loss_fn, acc=acc,
                                     out=out)
        row = {"step": t + 1, "loss": loss_value, "lr": active.param_groups[0]["lr"], "phase": opt.phase(t),
               "removed_params": removed_params(), **opt.metrics()}
        history["steps"].append(row)
        metric(t + 1, {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"})
        progress(0.1 + 0.7 * (t + 1) / st.steps, f"step {t + 1}/{st.steps} loss {row['loss']:.3f} ({row['phase']})")
        if (t + 1) % st.checkpoint_every == 0 or opt.boundary(t) or t + 1 == st.steps:
            history["events"] = opt.events()
            if main and active is opt:
                runs.save_checkpoint(out, t + 1, peft_model, opt, {"history": history}, changed=opt.changed_tensors())
            elif main:  # every parameter changed: the checkpoint holds them all
                runs.save_checkpoint(out, t + 1, student, active, {"history": history, "train": FULL},
                                     changed=tuple(student.parameters()))
    loss_fn = teacher = None  # the teacher's memory is free before compressing
    progress(0.82, "compressing")
    removal = opt.removal()
    plan = opt.plan  # the fixed plan, or once the schedule finished the realized one (checked against it)
    if plan is None or removal != {gid: u for gid, u in plan.removal.items() if u}:
        raise RuntimeError(f"the zero set differs from the plan: {removal} vs {plan.removal if plan else None}")
    if not main:  # process 0 compresses, saves and evaluates; the others are done
        return {"main": False, "process": acc.process_index, "removal": removal, "history": history["steps"]}
    merged = peft_model.merge_and_unload() if active is opt else student
    from ..compress import compress

    small, creport = compress(merged, groups, removal)  # verifies itself: masked vs compressed logits
    plan.save(out / "plan.json")
    from ..export import save_pruned

    provenance = {"method": st.method, "source": str(source), "settings": st.to_dict(), "plan": "plan.json",
                  "ratio_target": plan.spec.ratio, "ratio_achieved": plan.ratio_achieved}
    save_pruned(small, out / "model", report=creport, tokenizer=tok, provenance=provenance)
    after_eval = _evaluate(small, tok, eval_sources, st, progress, 0.88, "pruned")
    params_after = count_parameters(small)
    report = {
        "format": REPORT_FORMAT, "method": st.method, "model": str(source), "settings": st.to_dict(),
        "device": str(device), "threads": torch.get_num_threads(), "seconds": round(time.time() - t0, 1),
        "params_before": params_before, "params_after": params_after, "params_removed": params_before - params_after,
        "ratio_target": st.ratio, "ratio_achieved": (params_before - params_after) / params_before,
        "plan_params_removed": plan.params_removed,
        "removed_by_layer": plan.by_layer(), "removed_over_time": _removed_over_time(history, groups),
        "eval_before": before_eval, "eval_after": after_eval, "history": history["steps"],
        "events": opt.events(), "tokens_trained": st.steps * st.batch_size * st.seq_len,
        "optimizer_steps": st.steps, "scores_from": plan.scores_from, "method_info": method_info,
        "calibration_tokens": method_info.get("calibration_tokens", 0),
        "processes": acc.num_processes, "gradient_accumulation_steps": acc.gradient_accumulation_steps,
        "mixed_precision": acc.mixed_precision, "teacher": teacher_info,
        "train": train, "train_requested": st.train, "train_reason": train_reason, "full_from_step": full_from,
        "training": _training(st, full_from),
    }
    write_json_atomic(out / "report.json", report)
    progress(1.0, "done")
    return report


def _full_from(st: PruneSettings, opt: Any, train: str) -> int | None:
    """Full training's switch step (``train``: the resolved mode, ``train_mode``): where the method's optimizer says
    its structure is final — which the settings promised when they checked the steps (refused otherwise: an exact
    run or none)."""
    if train != "full":
        return None
    if opt.final_step is None or opt.final_step != st.final_step():
        raise RuntimeError(f"--train full: {st.method}'s structure is final at step {opt.final_step}, "
                           f"the settings expected {st.final_step()}")
    return opt.final_step


def _trained_in_full(ck: Path) -> bool:
    """The checkpoint was written after the ``--train full`` switch (its state says so)."""
    return json.loads((ck / "state.json").read_text()).get("train") == FULL


def _training(st: PruneSettings, full_from: int | None) -> list[dict]:
    """Which steps trained what (the report's ``training``): LoRA adapters until ``full_from``, every parameter of
    the masked model from there; phases without a step are left out."""
    lora = f"LoRA adapters (r={st.lora_r}, alpha={st.lora_alpha:g}, {st.lora_targets}), base weights frozen"
    end = st.steps if full_from is None else full_from
    rows = [{"from_step": 0, "to_step": end, "trained": "lora", "what": lora}] if end > 0 else []
    if full_from is not None:
        rows.append({"from_step": full_from, "to_step": st.steps, "trained": FULL,
                     "what": "every parameter of the masked model (LoRA merged), AdamW at the run's lr"
                             + (f" ({st.lr_schedule} decay)" if st.lr_schedule != "constant" else "")
                             + ", removed units held at exactly 0"})
    return rows


def _teacher(st: PruneSettings, dense_copy: Any, packed: Any, model: Any, device: Any, acc: Any,
             progress: Progress) -> tuple[Any, dict]:
    """The distillation teacher (``lorashear.distill``). The student's base is the dense model pruned in place, so
    no teacher can share its weights: ``dense`` and ``finetuned`` own the one copy taken at load time, a folder is
    loaded once. Under accelerate process 0 trains (or finds) a ``finetuned`` teacher first; the others then
    read it from the cache."""
    from .. import parallel

    acc = acc or parallel.Solo()
    first = acc.is_main_process or st.teacher != "finetuned"

    def build() -> tuple[Any, dict]:
        progress(0.06, f"distillation teacher: {st.teacher}")
        return distill.build_teacher(st.teacher, lambda: dense_copy, packed=packed, budget=distill.Budget.of(st),
                                     device=device, vocab=distill.output_size(model),
                                     dtype=next(model.parameters()).dtype,
                                     progress=lambda f, s: progress(0.06, s))

    built = build() if first else None
    acc.wait_for_everyone()
    return built if built is not None else build()


def finetune_dense(source: Any, settings: PruneSettings | None = None, *, progress: Progress | None = None,
                   full: bool = False, **overrides: Any) -> dict:
    """The honest reference: the dense model given the same LoRA budget as a pruning run (same adapters, data
    stream, steps, tokens, lr), merged and evaluated the same way. Returns {eval_before, eval_after, ...}.

    It *is* the ``finetuned`` distillation teacher: the same ``distill.corrected_teacher`` call, so it is trained
    once per (model, data, budget, seed) and cached on disk, and a pruning run distilling from it (or this
    reference asked for again) reuses the adapters and their evaluation instead of training a second copy.

    ``full=True``: the dense model given a ``--train full`` run's budget instead (every parameter, AdamW, the same
    steps, data stream and lr; ``distill.train_full``) — the fair reference for a pruned model trained that way.
    Neither a teacher nor cached; ``method`` says ``dense+full``."""
    from ..loading import load_model, pick_device

    st = replace(settings, **overrides) if settings is not None else PruneSettings(**overrides)
    progress = progress or (lambda f, s: None)
    device, _ = pick_device(st.device)
    model, tok = load_model(source, device=device)
    packed, eval_sources = _data(st, tok, model)
    before = _evaluate(model, tok, eval_sources, st, progress, 0.05, "dense")
    if full:
        model, losses = distill.train_full(model, packed, distill.Budget.of(st, lr_schedule=st.lr_schedule),
                                           progress=lambda f, s: progress(0.1 + 0.8 * f, f"full fine-tune: {s}"))
        model.eval()
        after = _evaluate(model, tok, eval_sources, replace(st, measure_latency=False), progress, 0.92, "dense + full")
        return {"method": "dense+full", "settings": st.to_dict(), "eval_before": before, "eval_after": after,
                "losses": losses, "tokens_trained": st.steps * st.batch_size * st.seq_len}
    teacher, info = distill.corrected_teacher(model, packed, distill.Budget.of(st),
                                              progress=lambda f, s: progress(0.1 + 0.8 * f, s))
    after = _teacher_eval(teacher, info, tok, eval_sources, st, progress, 0.92)
    return {"method": "dense+lora", "settings": st.to_dict(), "eval_before": before, "eval_after": after,
            "teacher": info, "losses": distill.teacher_losses(info),
            "tokens_trained": st.steps * st.batch_size * st.seq_len}


def _teacher_eval(teacher: Any, info: dict, tok: Any, sources: dict, st: PruneSettings, progress: Progress,
                  at: float) -> dict:
    """The corrected teacher's evaluation, stored beside it in the cache (so the dense + budget reference and
    every distilling run report the very same figures, computed once)."""
    return distill.cached_eval(
        info, {"eval_data": list(st.eval_data), "eval_tokens": st.eval_tokens, "eval_protocols": list(st.eval_protocols)},
        lambda: _evaluate(teacher, tok, sources, replace(st, measure_latency=False), progress, at,
                          f"{st.teacher or 'finetuned'} teacher"))


def _data(st: PruneSettings, tok: Any, model: Any) -> tuple[Any, dict[str, list[str]]]:
    """Training blocks and evaluation texts. Only what the run can read is tokenized: per source, a seeded
    random subset of documents holding the tokens of every step's batch (a source may be drawn for all of
    them), and the prefix of each evaluation source that ``eval_tokens`` scores."""
    from ..data import SELF_DATA, Mixture, file_specs, load_sources, texts_for_tokens

    need = st.steps * st.batch_size * st.seq_len + st.seq_len
    files = file_specs(st.data)
    train = {name: texts_for_tokens(texts, tok, need, seed=st.seed + i)
             for i, (name, texts) in enumerate((load_sources(files, split="train") if files else {}).items())}
    if SELF_DATA in st.data:
        train[SELF_DATA] = _self_texts(model, tok, need, st)
    packed = Mixture(train, name="training data").pack(tok, st.seq_len, model=model)
    evals = load_sources(list(st.eval_data), split="validation")
    if st.eval_tokens:
        evals = {name: texts_for_tokens(texts, tok, st.eval_tokens) for name, texts in evals.items()}
    return packed, evals


SELF_DATA_SEED = 104_729  # offset of --data self's sampling seed from --seed (apart from runs.batch_seed's)


def _self_texts(model: Any, tok: Any, n_tokens: int, st: PruneSettings) -> list[str]:
    """``--data self``: ``n_tokens`` of text sampled from the dense model itself (ancestral, T = 1; the windows of
    ``knowledge.calibration.self_generated``, decoded), a training source as any other.

    Why: trained only on the user's sources, a pruned model is pulled toward them and what its removed units served
    elsewhere is not repaired; the model's own text carries every domain it knew, and with distillation the student
    is taught the teacher's distribution there. Kin to self-data distillation (Thangarasa et al., 2024, arXiv
    2410.09982: the unpruned model rewrites the fine-tuning answers against forgetting); here its free samples. Seeded
    apart from the calibration windows (which come from ``st.seed``)."""
    from ..knowledge.calibration import self_generated

    n = -(-n_tokens // st.seq_len)
    ids, _ = self_generated(model, tok, n_samples=n, seq_len=st.seq_len + 1, seed=SELF_DATA_SEED + st.seed,
                            batch_size=64)
    return tok.batch_decode(ids[:, 1:], skip_special_tokens=True)


def _protected(st: PruneSettings, model: Any, groups: list) -> dict[str, list[int]]:
    if not st.knowledge:
        return {}
    from ..knowledge import load_report, select_unprunable
    from .plan import protected_from_report

    rep = load_report(st.knowledge, model)
    if st.gamma is not None:
        rep = select_unprunable(rep, st.gamma, level=st.gamma_level)
    return protected_from_report(rep, groups)


def _evaluate(model: Any, tok: Any, sources: dict, st: PruneSettings, progress: Progress, at: float, what: str) -> dict:
    from ..evaluate import perplexity_summary

    progress(at, f"evaluating the {what} model")
    return perplexity_summary(model, tok, sources, st.eval_protocols, st.eval_tokens, cost=st.measure_latency)


def _removed_over_time(history: dict, groups: list) -> list[dict]:
    """Rows (step, removed params, sparsity per kind) whenever the removed count changed."""
    out, last = [], None
    for row in history["steps"]:
        key = row["removed_params"]
        if key != last:
            out.append({k: v for k, v in row.items() if k == "step" or k == "removed_params" or k.startswith("sparsity_")})
            last = key
    return out
