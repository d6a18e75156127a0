"""Reports: roll-ups add up, files round-trip, the γ selection marks exactly what it says, bad input is refused."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from lorashear import LorashearError
from lorashear.knowledge import calibration_data, check_model, load_report, select_unprunable
from lorashear.knowledge.report import read_meta
from lorashear.knowledge.calibration import check_samples


@pytest.fixture(scope="module")
def report(reports):
    return reports["lora_taylor"]


def test_units_cover_every_prunable_group_once(report, kgroups):
    prunable = {g.id: g.n_units for g in kgroups if g.prunable and g.kind != "query_heads"}  # LoRA-Taylor cannot
    counts = report.units.groupby("group").size().to_dict()
    assert counts == prunable
    assert sorted(set(report.units["kind"])) == ["attention", "hidden", "mlp"]


def test_rollups_add_up_to_the_unit_scores(report):
    total = report.units["score"].sum()
    assert report.by_group()["score"].sum() == pytest.approx(total)
    assert report.by_kind()["score"].sum() == pytest.approx(total)
    layered = report.units[report.units["layer"].notna()]["score"].sum()
    by_layer = report.by_layer()
    assert list(by_layer["layer"]) == list(range(6))
    assert by_layer["score"].sum() == pytest.approx(layered)
    assert (by_layer["attention"] + by_layer["mlp"]).to_numpy() == pytest.approx(by_layer["score"].to_numpy())


def test_rollups_of_a_gqa_report_leave_the_query_heads_out(reports, kgroups):
    rep = reports["taylor"]
    q = {g.id: g.n_units for g in kgroups if g.prunable and g.kind == "query_heads"}
    assert q and rep.units.groupby("group").size()[list(q)].to_dict() == q
    total = rep.rollup_units()["score"].sum()
    assert total < rep.units["score"].sum()
    assert rep.by_group()["share"].sum() == pytest.approx(1.0)
    assert rep.by_kind().query("rollup")["score"].sum() == pytest.approx(total)
    layers = rep.by_layer()
    assert (layers["attention"] + layers["mlp"]).to_numpy() == pytest.approx(layers["score"].to_numpy())
    assert layers["query_heads"].to_numpy() == pytest.approx(
        rep.overlap_units().groupby("layer")["score"].sum().to_numpy())


@pytest.mark.parametrize("suffix", [".parquet", ".json"])
def test_report_round_trips_through_its_file(reports, tmp_path, kmodel, suffix):
    rep = select_unprunable(reports["ablation"], 0.1)
    path = rep.save(tmp_path / f"report{suffix}")
    back = load_report(path, kmodel)
    pd.testing.assert_frame_equal(back.units, rep.units)
    pd.testing.assert_frame_equal(back.blocks.reset_index(drop=True), rep.blocks.reset_index(drop=True), check_dtype=False)
    assert back.meta == rep.meta
    assert back.meta["model"]["class"] == "LlamaForCausalLM" and back.meta["data"]["n_samples"] == 8


def test_save_without_suffix_writes_parquet_and_leaves_no_temp_file(report, tmp_path):
    path = report.save(tmp_path / "knowledge")
    assert path.name == "knowledge.parquet"
    assert [p.name for p in tmp_path.iterdir()] == ["knowledge.parquet"]


def test_identity_ignores_peft_wrapping(report, fresh_copy):
    from peft import LoraConfig, get_peft_model

    check_model(report, get_peft_model(fresh_copy, LoraConfig(r=2, target_modules=["q_proj"])))  # no error


def test_report_for_a_different_model_is_refused(report, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                                         head_dim=16, num_hidden_layers=2, vocab_size=128))
    path = report.save(tmp_path / "r.parquet")
    with pytest.raises(LorashearError, match="knowledge report is for another model"):
        load_report(path, other)


def test_a_file_that_is_not_a_report_is_refused(tmp_path):
    path = tmp_path / "x.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(path)
    with pytest.raises(LorashearError, match="not a knowledge report"):
        load_report(path)


# ------------------------------------------------------------------------------------------ selection
@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.25, 0.5])
def test_unit_selection_marks_exactly_gamma_of_all_units_by_density(report, gamma):
    sel = select_unprunable(report, gamma, level="unit")
    u = sel.units
    k = int(math.floor(gamma * len(u) + 0.5))
    assert int(u["unprunable"].sum()) == k
    if 0 < k < len(u):
        assert u.loc[u["unprunable"], "density"].min() >= u.loc[~u["unprunable"], "density"].max()
    assert sel.meta["selection"]["selected"] == k and "by density" in sel.meta["selection"]["rule"]


def test_unit_selection_per_group_marks_gamma_of_each_group(report):
    sel = select_unprunable(report, 0.25, level="unit", scope="group")
    for gid, rows in sel.units.groupby("group"):
        assert int(rows["unprunable"].sum()) == int(math.floor(0.25 * len(rows) + 0.5)), gid


def test_layer_selection_marks_whole_layers(report):
    sel = select_unprunable(report, 0.5, level="layer")
    u = sel.units
    marked = sorted(int(x) for x in u.loc[u["unprunable"], "layer"].unique())
    assert len(marked) == 3
    layered = u[u["layer"].notna()]
    assert layered.groupby("layer")["unprunable"].agg(lambda s: s.all() or not s.any()).all()
    assert not u.loc[u["layer"].isna(), "unprunable"].any()  # the hidden group spans every layer
    dens = report.by_layer().set_index("layer")["density"]
    assert dens[marked].min() >= dens.drop(marked).max()
    assert sel.meta["selection"]["of"] == "layers" and sel.meta["selection"]["out_of"] == 6


def test_group_selection_is_the_default_and_marks_whole_groups(report):
    assert select_unprunable(report, 0.3).meta["selection"] == select_unprunable(report, 0.3, level="group").meta["selection"]
    sel = select_unprunable(report, 0.3, level="group")
    per_group = sel.units.groupby("group")["unprunable"].agg(["all", "any"])
    assert (per_group["all"] == per_group["any"]).all()
    assert int(per_group["all"].sum()) == int(math.floor(0.3 * 13 + 0.5))


@pytest.mark.parametrize("gamma", [1.0, -0.1, 1.5, float("nan")])
def test_gamma_outside_zero_one_is_refused(report, gamma):
    with pytest.raises(LorashearError, match=r"gamma must be in \[0, 1\)"):
        select_unprunable(report, gamma)


# ---------------------------------------------------------------------------------------- bad input
def test_calibration_text_shorter_than_one_window_is_refused(ktokenizer, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("def f(): pass")
    with pytest.raises(LorashearError, match="calibration source 'short'.*fewer than seq_len=128"):
        calibration_data(ktokenizer, [str(short)], n_samples=4, seq_len=128)


def test_calibration_windows_of_one_token_are_refused():
    with pytest.raises(LorashearError, match="calibration data too short"):
        check_samples(torch.zeros(4, 1, dtype=torch.long))


def test_analyze_refuses_bad_gamma_before_computing(kmodel, kgroups, monkeypatch):
    from lorashear.knowledge import analyze
    from lorashear.knowledge import analysis as analyze_module

    monkeypatch.setattr(analyze_module, "run_estimator", lambda *a, **k: pytest.fail("estimator ran"))
    with pytest.raises(LorashearError, match="gamma"):
        analyze(kmodel, None, estimator="magnitude", groups=kgroups, gamma=2.0)


def test_unknown_estimator_option_is_refused(kmodel, kgroups, ksamples):
    from lorashear.knowledge import analyze

    with pytest.raises(LorashearError, match="has no option"):
        analyze(kmodel, ksamples[0], estimator="ablation", groups=kgroups, variant="second")


@pytest.mark.parametrize("arch", ["llama-gqa", "llama-tied", "gpt2"])
def test_graph_identity_is_the_model_identity_read_from_its_traced_graph(arch, tmp_path):
    """The app holds only the traced graph of the browsed model; it must tell which reports describe it."""
    import lorashear
    from lorashear.knowledge.report import graph_identity, model_identity, same_model
    from tests.tiny_models import traced

    model, og, _ = traced(arch)
    og.save(tmp_path / "graph.json")
    back = graph_identity(lorashear.load_graph(tmp_path / "graph.json"))
    mine = model_identity(model)
    assert {k: back[k] for k in ("class", "config_hash", "shapes_hash", "n_params")} == \
        {k: mine[k] for k in ("class", "config_hash", "shapes_hash", "n_params")}
    assert same_model(back, mine)
    other = "llama" if arch != "llama" else "gpt2"
    assert not same_model(back, graph_identity(traced(other)[1]))
    assert not same_model(back, None)


@pytest.mark.parametrize("version", [1, 2])
def test_a_magnitude_report_plans_like_the_magnitude_fallback(reports, kmodel, kgroups, tmp_path, version):
    """A magnitude report holds squared norms — scores that add up, compared per parameter by the plan as they are —
    so the plan from the report is the plan from the model's own weight magnitudes; a version-1 file (norms) too."""
    from lorashear.prune.preview import plan_model

    path = reports["magnitude"].save(tmp_path / "magnitude.parquet")
    if version == 1:
        _as_version_1(path)
    from_report = plan_model(kmodel, ratio=0.3, knowledge=str(path), groups=kgroups)
    from_weights = plan_model(kmodel, ratio=0.3, groups=kgroups)
    assert from_report.removal == from_weights.removal


# ------------------------------------------------------------------------------------ additive scores, old files
def test_magnitude_scores_add_up_to_the_groups_squared_weight_norm(reports, kmodel):
    """Scores add up: a magnitude report's group total is the squared Frobenius norm of the group's producer rows."""
    params = dict(kmodel.named_parameters())
    by_group = reports["magnitude"].by_group().set_index("group")["score"]
    for gid, names in (("model.layers.2.mlp:channels", ["gate_proj", "up_proj"]),
                       ("model.layers.4.self_attn:heads", ["q_proj", "k_proj", "v_proj"])):
        module = gid.split(":")[0]
        want = sum(float(params[f"{module}.{n}.weight"].detach().double().pow(2).sum()) for n in names)
        assert by_group[gid] == pytest.approx(want, rel=1e-5), gid


def _as_version_1(path):
    """Rewrite a saved report as version 1 wrote it: format 1 and, for magnitude, the norm ‖x_u‖ as the score."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    def old_meta(meta):
        meta = dict(meta, format="lorashear.knowledge/1")
        if meta["estimator"] == "magnitude":
            meta["settings"] = {k: v for k, v in meta["settings"].items() if k != "squared"}
            meta["notes"] = {k: v for k, v in meta["notes"].items() if k != "score"}
        return meta

    def old_units(units, estimator):
        if estimator == "magnitude":
            units["score"] = np.sqrt(units["score"])
            units["density"] = units["score"] / units["params"]
        return units

    if path.suffix == ".json":
        doc = json.loads(path.read_text())
        doc["format"], doc["meta"] = "lorashear.knowledge/1", old_meta(doc["meta"])
        doc["units"] = old_units(pd.DataFrame(doc["units"]), doc["meta"]["estimator"]).to_dict(orient="list")
        path.write_text(json.dumps(doc))
        return
    table = pq.read_table(path)
    extra = json.loads(table.schema.metadata[b"lorashear.knowledge"])
    extra["meta"] = old_meta(extra["meta"])
    units = old_units(table.to_pandas(), extra["meta"]["estimator"])
    table = pa.Table.from_pandas(units, preserve_index=False)
    pq.write_table(table.replace_schema_metadata({b"lorashear.knowledge": json.dumps(extra).encode()}), path)


@pytest.mark.parametrize("suffix", [".parquet", ".json"])
def test_a_version_1_magnitude_report_is_squared_on_load(reports, tmp_path, suffix):
    """Version 1 stored a magnitude report's norms; reading it gives the squared norms version 2 stores, and says so."""
    rep = reports["magnitude"]
    path = rep.save(tmp_path / f"old{suffix}")
    _as_version_1(path)
    back = load_report(path)
    np.testing.assert_allclose(back.units["score"], rep.units["score"], rtol=1e-12)
    np.testing.assert_allclose(back.units["density"], rep.units["density"], rtol=1e-12)
    assert back.meta["format"] == "lorashear.knowledge/2" and back.meta["upgraded_from"] == "lorashear.knowledge/1"
    assert back.meta["notes"]["score"] == rep.meta["notes"]["score"] and back.meta["settings"]["squared"]
    assert select_unprunable(back, 0.3).meta["selection"]["rule"] == select_unprunable(rep, 0.3).meta["selection"]["rule"]
    assert read_meta(path)["upgraded_from"] == "lorashear.knowledge/1"


def test_a_version_1_report_of_another_estimator_loads_unchanged(reports, tmp_path):
    rep = reports["taylor"]
    path = rep.save(tmp_path / "old.parquet")
    _as_version_1(path)
    pd.testing.assert_frame_equal(load_report(path).units, rep.units)


def test_an_unknown_report_version_is_refused(reports, tmp_path):
    import json

    path = reports["magnitude"].save(tmp_path / "new.json")
    doc = json.loads(path.read_text())
    doc["format"] = doc["meta"]["format"] = "lorashear.knowledge/3"
    path.write_text(json.dumps(doc))
    with pytest.raises(LorashearError, match="not a knowledge report"):
        load_report(path)
