"""The recall acceptance harness: held-out item forms, the base reference row with the adapter disabled on the same
model object, and the percentile bootstrap checked against an exact computation."""

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from anllm.config import AnLLMError
from anllm.evaluation import acceptance as acceptance_mod
from anllm.evaluation.acceptance import (
    CONFIG_KEY,
    REFERENCE,
    AcceptanceConfig,
    acceptance_items,
    adapter_disabled,
    paired_differences,
    read_records,
    run_acceptance,
    summarise,
)
from anllm.evaluation.bootstrap import bootstrap_interval
from anllm.evaluation.recall import evaluate_recall
from anllm.memory import ACCEPTANCE_OPENERS, FORM_TEMPLATES, FormTemplate, leaks, make_items
from anllm.models import LoadedModel
from tests.conftest import make_lm

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FILLER = " ".join(f"Line {i} of the manual explains how the parser reads its input." for i in range(300))
FAMILIES = ("single", "multi", "chat", "fewshot-recall")


def form_items(seed=3, n=6, distances=(40, 200)):
    return make_items(
        seed=seed,
        distances=distances,
        n_per_distance=n,
        filler=FILLER,
        count_tokens=len,
        families=FAMILIES,
        templates=FORM_TEMPLATES,
        chat_openers=ACCEPTANCE_OPENERS,
    )


# -- items ------------------------------------------------------------------------------------------------------------
def test_form_items_are_deterministic_and_leak_free():
    a, b, c = form_items(3), form_items(3), form_items(4)
    assert [i.to_dict() for i in a] == [i.to_dict() for i in b]
    assert [i.to_dict() for i in a] != [i.to_dict() for i in c]
    assert {i.family for i in a} == set(FAMILIES) and len(a) == 4 * 2 * 6
    for it in form_items(5, n=25):
        assert not leaks(it.answer, it.question), it
        assert re.search(rf"(?<!\w){re.escape(it.answer)}(?!\w)", it.context), it  # the answer is stated
        assert it.fact and it.answer in it.fact


def test_form_items_cover_many_answer_forms_and_paraphrases():
    its = form_items(1, n=40)
    assert {"date", "decimal", "time", "code", "phrase", "title", "name", "multi"} <= {i.kind for i in its}
    assert any(re.fullmatch(r"\d{1,2} [A-Z][a-z]+ \d{4}", i.answer) for i in its)  # dates
    assert any(re.fullmatch(r"\d+\.\d+", i.answer) for i in its)  # decimals
    assert any(re.fullmatch(r"[A-Z]{2}-\d{4}", i.answer) for i in its)  # codes
    asked = {}
    for i in its:
        if i.family == "single":
            asked.setdefault(i.template, set()).add(re.sub(r"\b[A-Z][a-z]+\b", "X", i.question))
    assert any(len(v) >= 2 for v in asked.values())  # the same template asked with different wordings
    several = [t for t in FORM_TEMPLATES if len({slot for _, slot in t.asks}) >= 2]
    assert len(several) >= 3  # rows stating several facts, any of which is asked


def test_fewshot_recall_items_show_worked_answers_then_ask():
    for it in [i for i in form_items(2, n=10) if i.family == "fewshot-recall"]:
        assert it.question.startswith("Q: ") and it.question.endswith("\nA:")
        demos = re.findall(r"Q: (.+)\nA: (.+)", it.context)
        assert 2 <= len(demos) <= 3
        for _q, a in demos:
            assert a in it.context.split("\n\n")[0]  # every worked answer is a fact stated before the filler
        assert it.answer in it.context.split("\n\n")[0] and it.answer not in [a for _, a in demos]


def test_form_templates_are_valid():
    values = {k: "x" for k in re.findall(r"\{(\w+)\}", " ".join(t.statement for t in FORM_TEMPLATES))}
    values.update({k: "x" for t in FORM_TEMPLATES for q, _ in t.asks for k in re.findall(r"\{(\w+)\}", q)})
    for t in FORM_TEMPLATES:
        for pick, (_, slot) in enumerate(t.asks):
            assert "{" + slot + "}" in t.statement, t  # the asked slot is stated
            t.fill(values, pick)
    with pytest.raises(AnLLMError, match="asks nothing"):
        FormTemplate("x", "A {name}.", ())


# -- the base reference row: the adapter switched off on the same model --------------------------------------------
def peft_lm(seed=0):
    from peft import LoraConfig, get_peft_model

    lm = make_lm("llama", "ep", dtype=torch.float32, n_sink=1, window=6, max_segment=40)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "up_proj"],
                     init_lora_weights=False)  # fmt: skip
    torch.manual_seed(seed)
    model = get_peft_model(lm.model, cfg).eval()  # random A and B: the adapter changes the outputs
    return LoadedModel(model, lm.tokenizer, lm.anchor, lm.anchor_ids, "tiny-peft", [], True)


def test_adapter_disabled_gives_the_unadapted_model_on_the_same_object():
    lm = peft_lm()
    plain = make_lm("llama", "ep", dtype=torch.float32)  # the same seed: the weights before the adapter
    ids = torch.tensor([[5, 17, 40, 33, 8, 71, 12]])
    with torch.no_grad():
        want = plain.model(ids).logits
        adapted = lm.model(ids).logits
        with adapter_disabled(lm) as same:
            assert same is lm
            off = lm.model(ids).logits
        again = lm.model(ids).logits  # switched back on after the block
    assert torch.equal(off, want)
    assert (adapted - want).abs().max() > 1e-3
    assert torch.equal(again, adapted)
    with pytest.raises(AnLLMError, match="no switchable adapter"):
        with adapter_disabled(plain):
            pass


def test_reference_row_is_the_base_model_and_other_rows_the_adapted_one(tmp_path):
    lm = peft_lm()
    cfg = AcceptanceConfig(distances=(40,), n=1, families=("single", "chat"), fillers=("literary",), max_new_tokens=2)
    out = tmp_path / "acc.jsonl"
    recs = run_acceptance(lm, cfg, out)
    assert read_records(out) == recs  # appended as the run goes
    items = [it for _, it in acceptance_items(lm, cfg)]
    plain = make_lm("llama", "ep", dtype=torch.float32, n_sink=1, window=6, max_segment=40)
    base = evaluate_recall(plain, items, ("full",), budget=None, max_new_tokens=2).items
    adapted = evaluate_recall(lm, items, ("full", "anchor"), budget="anchor", max_new_tokens=2).items
    by = {(r["id"], r["row"]): r for r in recs}
    for b, a in zip(base, [r for r in adapted if r["mode"] == "full"]):
        ref, full = by[(b["id"], REFERENCE)], by[(b["id"], "full")]
        assert ref["logprob"] == pytest.approx(b["logprob"], abs=1e-5)  # base weights, not a second load's drift
        assert full["logprob"] == pytest.approx(a["logprob"], abs=1e-5)
        assert abs(ref["logprob"] - full["logprob"]) > 1e-3
    for r in adapted:
        if r["mode"] == "anchor":
            assert by[(r["id"], "anchor")]["kv_entries"] == r["kv_entries"] < r["prompt_tokens"]
    assert {r["row"] for r in recs} == {REFERENCE, "full", "anchor", "streaming", "sepllm"}


def _strip(recs):  # records without their wall time, in a stable order
    return sorted(({k: v for k, v in r.items() if k != "seconds"} for r in recs), key=json.dumps)


def _count_calls(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def counted(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_a_stopped_run_resumed_gives_the_unbroken_runs_records_running_only_the_missing(tmp_path, monkeypatch):
    lm = peft_lm()
    cfg = AcceptanceConfig(distances=(40,), n=2, families=("single", "chat"), fillers=("literary",), max_new_tokens=2)
    full = tmp_path / "full.jsonl"
    whole = run_acceptance(lm, cfg, full)
    lines = full.read_text().splitlines()
    assert json.loads(lines[0])[CONFIG_KEY]["max_new_tokens"] == 2 and len(lines) == 1 + 4 * 5  # 4 items, 5 rows
    # stopped after 2 items, 2 rows of the third written and the next line cut mid-write
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(lines[: 1 + 2 * 5 + 2]) + "\n" + lines[1 + 2 * 5 + 2][:25], encoding="utf-8")
    calls = _count_calls(monkeypatch, acceptance_mod, "evaluate_recall")
    with pytest.warns(UserWarning, match="truncated last line"):
        resumed = run_acceptance(lm, cfg, cut, resume=True)
    assert len(calls) == 2 * 2  # only the third and fourth items ran (reference row + the adapted rows each)
    assert {c[1][0].id for c in calls} == {it.id for _, it in acceptance_items(lm, cfg)[2:]}
    assert _strip(resumed) == _strip(whole)  # same records, same values
    assert _strip(read_records(cut)) == _strip(whole)  # the file too: the unfinished item's lines were replaced
    calls.clear()
    again = run_acceptance(lm, cfg, cut, resume=True)  # complete: nothing runs
    assert calls == [] and _strip(again) == _strip(whole)


def test_resume_refuses_another_configuration_and_a_file_without_one(tmp_path):
    lm = peft_lm()
    cfg = AcceptanceConfig(distances=(40,), n=1, families=("single",), fillers=("literary",), max_new_tokens=2)
    out = tmp_path / "acc.jsonl"
    run_acceptance(lm, cfg, out)
    before = out.read_text()
    other = AcceptanceConfig(distances=(40,), n=1, families=("single",), fillers=("literary",), max_new_tokens=3)
    with pytest.raises(AnLLMError, match=r"max_new_tokens=2.*max_new_tokens=3"):
        run_acceptance(lm, other, out, resume=True)
    assert out.read_text() == before  # nothing written
    legacy = tmp_path / "legacy.jsonl"
    legacy.write_text("".join(line + "\n" for line in before.splitlines()[1:]), encoding="utf-8")
    with pytest.raises(AnLLMError, match="no configuration line"):
        run_acceptance(lm, cfg, legacy, resume=True)
    fresh = tmp_path / "new.jsonl"  # --resume without a file just starts
    assert _strip(run_acceptance(lm, cfg, fresh, resume=True)) == _strip(read_records(out))


def test_read_records_drops_only_a_truncated_last_line(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({CONFIG_KEY: {"n": 1}}) + '\n{"a": 1}\n{"a": 2}\n{"a": ', encoding="utf-8")
    with pytest.warns(UserWarning, match="truncated"):
        assert read_records(p) == [{"a": 1}, {"a": 2}]
    p.write_text('{"a": 1}\n{"a": \n{"a": 2}\n', encoding="utf-8")
    with pytest.raises(AnLLMError, match="line 2"):
        read_records(p)


def test_a_model_without_adapter_is_refused_before_running(tmp_path):
    lm = make_lm("llama", "ep", dtype=torch.float32)
    with pytest.raises(AnLLMError, match="unmerged adapter"):
        run_acceptance(lm, AcceptanceConfig(distances=(40,), n=1), tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()
    recs = run_acceptance(lm, AcceptanceConfig(distances=(40,), n=1, families=("single",), fillers=("technical",),
                                               reference=False, max_new_tokens=1))  # fmt: skip
    assert REFERENCE not in {r["row"] for r in recs} and len(recs) == 4


def test_config_is_validated():
    for bad in (dict(n=0), dict(fillers=("legal",)), dict(families=("fewshot",)), dict(policies=("full",))):
        with pytest.raises(AnLLMError):
            AcceptanceConfig(**bad)


# -- bootstrap --------------------------------------------------------------------------------------------------------
def binomial_quantile(k: int, n: int, q: float) -> float:
    """The q-quantile of Binomial(n, k/n) / n: the exact distribution of a bootstrap mean of k ones in n."""
    p, cdf = k / n, 0.0
    for j in range(n + 1):
        cdf += math.comb(n, j) * p**j * (1 - p) ** (n - j)
        if cdf >= q:
            return j / n
    return 1.0


@pytest.mark.parametrize("k,n", [(7, 20), (45, 60), (2, 16)])
def test_bootstrap_matches_the_exact_resampling_distribution(k, n):
    values = [1.0] * k + [0.0] * (n - k)
    ci = bootstrap_interval(values, n_boot=40000, seed=1)
    assert ci.mean == k / n and ci.n == n and ci.level == 0.95
    assert abs(ci.lo - binomial_quantile(k, n, 0.025)) <= 1 / n + 1e-12
    assert abs(ci.hi - binomial_quantile(k, n, 0.975)) <= 1 / n + 1e-12


def test_bootstrap_is_seeded_and_edge_cases():
    x = [0.2, 1.5, 3.0, 0.1, 2.2, 0.7, 1.1]
    assert bootstrap_interval(x, seed=4) == bootstrap_interval(x, seed=4)
    assert bootstrap_interval(x, seed=4) != bootstrap_interval(x, seed=5)
    a = bootstrap_interval(x, n_boot=3000, seed=0)
    # independent: the same resamples drawn here, quantiles by sorting
    rng = np.random.default_rng(0)
    means = np.sort(np.asarray(x)[rng.integers(0, len(x), size=(3000, len(x)))].mean(1))
    assert a.lo == pytest.approx(np.interp(0.025 * 2999, np.arange(3000), means))
    assert a.hi == pytest.approx(np.interp(0.975 * 2999, np.arange(3000), means))
    one = bootstrap_interval([1.0])
    assert (one.mean, one.lo, one.hi) == (1.0, 1.0, 1.0)
    for bad in ([], dict(n_boot=0), dict(level=1.0)):
        with pytest.raises(AnLLMError):
            bootstrap_interval(*(([0.0, 1.0],) if isinstance(bad, dict) else (bad,)),
                               **(bad if isinstance(bad, dict) else {}))  # fmt: skip


def test_summary_counts_only_items_every_row_finished():
    recs = []
    for i, em in enumerate([1, 0, 1, 1]):
        for row in ("base:full", "anchor"):
            recs.append({"filler": "literary", "id": f"single-40-{i}", "family": "single", "distance": 40,
                         "row": row, "em": bool(em) if row == "anchor" else True, "kv_entries": 10,
                         "prompt_tokens": 50, "seconds": 1.0})  # fmt: skip
    recs.append({**recs[0], "id": "single-40-9", "row": "base:full"})  # the anchor row never ran on it
    s = summarise(recs, n_boot=500)
    assert s["items_complete"] == 4
    assert {c["filler"] for c in s["cells"]} == {"literary", "all"}
    cell = next(c for c in s["cells"] if c["row"] == "anchor" and c["filler"] == "literary")
    assert {k: v for k, v in cell.items() if k != "filler"} == {
        k: v
        for k, v in next(c for c in s["cells"] if c["row"] == "anchor" and c["filler"] == "all").items()
        if k != "filler"
    }  # one filler: the pooled cell is the same
    assert cell["n"] == 4 and cell["em"] == 0.75 and cell["lo"] <= 0.75 <= cell["hi"]
    assert next(c for c in s["cells"] if c["row"] == "base:full")["n"] == 4
    assert {c["family"] for c in s["by_family"]} == {"single"}


def _rec(filler, i, row, em, distance=256, answer=None):
    return {"filler": filler, "id": f"single-{distance}-{i}", "row": row, "em": em, "distance": distance,
            "answer": answer or f"a{i}"}  # fmt: skip


def test_paired_differences_pair_the_same_items_and_rows():
    """Items and rows both runs finished are paired: the difference and its interval are the mean and bootstrap of
    the per-item differences (computed here independently), per filler and with both fillers pooled."""
    base = [_rec("literary", i, "anchor", em) for i, em in enumerate([0, 0, 1, 0])]
    base += [_rec("technical", i, "anchor", em) for i, em in enumerate([1, 0, 0])]
    base += [_rec("literary", 9, "anchor", 1), _rec("literary", 0, "base:full", 1)]  # only in the baseline
    new = [_rec("literary", i, "anchor", em) for i, em in enumerate([1, 1, 1, 0])]
    new += [_rec("technical", i, "anchor", em) for i, em in enumerate([0, 0, 1])]
    new += [_rec("technical", 0, "full", 1)]  # a row the baseline lacks
    cells = {(c["filler"], c["row"]): c for c in paired_differences(base, new, n_boot=500, seed=3)}
    assert set(cells) == {("all", "anchor"), ("literary", "anchor"), ("technical", "anchor")}
    diffs = {"literary": [1, 1, 0, 0], "technical": [-1, 0, 1], "all": [1, 1, 0, 0, -1, 0, 1]}
    for filler, d in diffs.items():
        c = cells[(filler, "anchor")]
        ci = bootstrap_interval([float(x) for x in d], n_boot=500, seed=3)
        assert (c["n"], c["diff"], c["lo"], c["hi"]) == (len(d), ci.mean, ci.lo, ci.hi)
        assert math.isclose(c["em"] - c["baseline_em"], c["diff"])
    assert cells[("literary", "anchor")]["baseline_em"] == 0.25 and cells[("literary", "anchor")]["em"] == 0.75
    with pytest.raises(AnLLMError, match="differs between the runs"):  # same id, another item (another seed)
        paired_differences(base, [_rec("literary", 0, "anchor", 1, answer="other")])
    with pytest.raises(AnLLMError, match="share no item"):
        paired_differences(base, [_rec("literary", 5, "anchor", 1)])


def test_a_baseline_must_be_an_acceptance_run_with_whole_records(tmp_path):
    from anllm.evaluation.acceptance import read_baseline

    head = json.dumps({CONFIG_KEY: {"seed": 7}}) + "\n"
    for name, text in {"with-settings": head, "without": ""}.items():  # runs before the settings line have none
        good = tmp_path / f"{name}.jsonl"
        good.write_text(text + json.dumps(_rec("literary", 0, "anchor", True)) + "\n", encoding="utf-8")
        assert read_baseline(good) == [_rec("literary", 0, "anchor", True)]
    cases = {
        "a-list": (head + "[1, 2]\n", "record 1 lacks"),
        "no-em": (head + json.dumps({"filler": "literary", "id": "x", "row": "anchor"}) + "\n", "record 1 lacks"),
        "only-config": (head, "no finished item"),
    }
    for name, (text, message) in cases.items():
        f = tmp_path / f"{name}.jsonl"
        f.write_text(text, encoding="utf-8")
        with pytest.raises(AnLLMError, match=message):
            read_baseline(f)


def test_cli_acceptance_writes_jsonl_json_and_plot(tmp_path):
    stem = tmp_path / "acc"
    cmd = [sys.executable, "-m", "anllm", "eval", "acceptance", "--model", "tiny-random", "--no-reference",
           "--out", str(stem), "--distances", "30", "--n", "1", "--families", "single,fewshot-recall",
           "--fillers", "technical", "--policies", "full,anchor", "--max-new-tokens", "1"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert {c["row"] for c in out["cells"]} == {"full", "anchor"} and out["items_complete"] == 2
    summary = json.loads(stem.with_suffix(".json").read_text())
    assert summary["config"]["fillers"] == ["technical"] and len(read_records(stem.with_suffix(".jsonl"))) == 4
    assert "exact match" in stem.with_suffix(".html").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "exists" in again.stderr and "--resume" in again.stderr
    jsonl = stem.with_suffix(".jsonl")
    whole = read_records(jsonl)
    jsonl.write_text("".join(x + "\n" for x in jsonl.read_text().splitlines()[:3]), encoding="utf-8")  # 1 item
    res = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (
        _strip(read_records(jsonl)) == _strip(whole) and json.loads(res.stdout.splitlines()[-1])["items_complete"] == 2
    )
    mism = [c if c != "30" else "31" for c in cmd]  # --distances 31
    res = subprocess.run(mism + ["--resume"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "distances=[30]" in res.stderr and "distances=[31]" in res.stderr
    summ = subprocess.run(cmd + ["--summarise"], capture_output=True, text=True, timeout=300)
    assert summ.returncode == 0, summ.stderr
    other = tmp_path / "other.jsonl"  # the same items, every exact match flipped: a baseline to compare with
    head = jsonl.read_text(encoding="utf-8").splitlines()[0] + "\n"  # the run's settings line
    other.write_text(head + "".join(json.dumps({**r, "em": not r["em"]}) + "\n" for r in whole), encoding="utf-8")
    vs = subprocess.run(cmd + ["--summarise", "--baseline", str(other)], capture_output=True, text=True, timeout=300)
    assert vs.returncode == 0, vs.stderr
    cells = json.loads(vs.stdout.splitlines()[-1])["versus_baseline"]["cells"]
    assert {c["row"] for c in cells} == {"full", "anchor"} and all(c["n"] == 2 for c in cells)  # 2 items a row
    for c in cells:  # flipped: each item's difference is em - (1 - em) = 2 em - 1
        mine = [float(r["em"]) for r in whole if r["row"] == c["row"]]
        assert math.isclose(c["diff"], sum(2 * x - 1 for x in mine) / 2)
    missing = subprocess.run(cmd + ["--summarise", "--baseline", str(tmp_path / "nope.jsonl")],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert missing.returncode == 2 and "--baseline" in missing.stderr and "nope.jsonl" in missing.stderr
    bad_cmd = [c for c in cmd if c != "--no-reference"]
    bad_cmd[bad_cmd.index("--out") + 1] = str(tmp_path / "b")
    bad = subprocess.run(bad_cmd, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unmerged adapter" in bad.stderr  # tiny-random has no adapter to switch off


@pytest.mark.slow
def test_a_checkpoint_adapter_loads_with_the_shipped_setting_and_bad_folders_are_refused(tmp_path):
    import shutil

    from anllm.evaluation.acceptance import load_adapted
    from anllm.models import ADAPTER_DIR

    ckpt = tmp_path / "adapter"  # a training checkpoint's adapter/: weights and config, no anchor.json
    ckpt.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(ADAPTER_DIR / name, ckpt / name)
    shipped, other = load_adapted(), load_adapted(ckpt)
    assert other.anchor == shipped.anchor and str(ckpt) in other.name and shipped.name.startswith("default")
    ids = torch.tensor([[1, 504, 3458, 30, 253, 1441, 28, 2]])
    with torch.no_grad():
        assert torch.equal(other.model(ids).logits, shipped.model(ids).logits)
    (ckpt / "adapter_model.safetensors").unlink()
    with pytest.raises(AnLLMError, match=r"adapter_model\.safetensors not found"):
        load_adapted(ckpt)


def test_cli_adapter_is_only_for_the_default_model_and_checked_before_loading(tmp_path, capsys):
    from anllm.cli import main

    def err(model, adapter):
        rc = main(["eval", "acceptance", "--model", model, "--adapter", str(adapter), "--out", str(tmp_path / "x"),
                   "--n", "1", "--no-reference"])  # fmt: skip
        assert rc == 2
        return capsys.readouterr().err

    assert "--adapter is for --model default" in err("tiny-random", tmp_path)
    assert "no such folder" in err("default", tmp_path / "nope")
    assert "adapter_config.json and adapter_model.safetensors not found" in err("default", tmp_path)
    (tmp_path / "adapter_config.json").write_text("{junk", encoding="utf-8")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    assert "is not readable JSON" in err("default", tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "anchor.json").write_text('{"kind": "nope"}', encoding="utf-8")
    assert "not a valid anchor configuration" in err("default", tmp_path)
    assert not (tmp_path / "x.jsonl").exists()
