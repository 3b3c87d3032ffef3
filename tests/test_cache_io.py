"""Saved caches: a loaded file continues exactly like the in-memory cache and like one masked pass (float64), for
every policy and both anchor kinds; any mismatching model or damaged file is refused with a clear AnLLMError."""

import dataclasses
import hashlib
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from anllm import cache_io
from anllm.anchors import insert_ac, mark_anchors
from anllm.cache_io import load_cache, read_cache, save_cache
from anllm.cli import main
from anllm.config import AnLLMError
from anllm.generation import forward_chunk, make_cache, prefill
from anllm.masks import segment_ids, to_additive
from anllm.models import load_model
from anllm.policies import POLICIES, TokenMeta
from tests.conftest import make_lm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DOC = "The cat sat. It was warm! Was it? Yes. Then the dog came and sat down too. The end came soon. Later"
QUESTIONS = [" on. Where did the cat sit? Say it", " Who came? The dog.", "!"]
# small windows so that every policy evicts on this short text
SPECS = {"streaming": "streaming:sink=2,window=6", "sepllm": "sepllm:sink=1,window=4"}


def ids_of(lm, text):
    text = insert_ac(text) if lm.anchor.mode == "ac" else text
    return torch.tensor([lm.tokenizer(text, add_special_tokens=False)["input_ids"]])  # (1, T)


def reference_logits(lm, policy, ids):
    """One forward over the whole sequence with the policy's own rule (plus causality) as the 4D mask."""
    T = ids.shape[1]
    anchor, _ = mark_anchors(ids, lm.anchor_ids, max_segment=lm.anchor.max_segment)
    pos = torch.arange(T)[None]  # (1, T)
    meta = TokenMeta(ids, pos, segment_ids(anchor), anchor, torch.ones_like(anchor))
    allowed = policy.visible(meta, meta) & torch.ones(T, T, dtype=torch.bool).tril()  # (1, T, T)
    mask = to_additive(allowed[:, None], lm.model.dtype)  # (1, 1, T, T)
    return lm.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits


def compressed(lm, mode, doc=DOC):
    cache = make_cache(lm, mode)
    prefill(lm.model, cache, ids_of(lm, doc), chunk_size=5)
    return cache


@pytest.mark.parametrize("anchors", ["ep", "ac"])
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_loaded_cache_continues_exactly(tmp_path, name, anchors):
    lm = make_lm("llama", anchors)
    mode = SPECS.get(name, name)
    doc, q = ids_of(lm, DOC), ids_of(lm, QUESTIONS[0])
    with torch.no_grad():
        cache = compressed(lm, mode)
        if name != "full":
            assert int(cache.n_evicted[0]) > 0
        save_cache(cache, lm, tmp_path / "doc.kv")
        loaded = load_cache(lm, tmp_path / "doc.kv")
        assert loaded.policy == cache.policy and int(loaded.n_seen[0]) == doc.shape[1]
        mem = forward_chunk(lm.model, cache, q)  # (1, Q, V)
        got = torch.cat([forward_chunk(lm.model, loaded, q[:, :3]), forward_chunk(lm.model, loaded, q[:, 3:])], 1)
        ref = reference_logits(lm, cache.policy, torch.cat([doc, q], 1))[:, doc.shape[1] :]
    assert (got - mem).abs().max() <= 1e-10
    assert (got - ref).abs().max() <= 1e-4
    for f in ("token", "pos", "seg", "anchor", "valid"):
        assert torch.equal(getattr(loaded.meta, f), getattr(cache.meta, f))


def test_one_file_serves_many_questions_and_a_batch(tmp_path):
    lm = make_lm("qwen2", "ep")
    with torch.no_grad():
        save_cache(compressed(lm, "anchor"), lm, tmp_path / "doc.kv")
        saved = load_cache(lm, tmp_path / "doc.kv")
        qs = [ids_of(lm, q) for q in QUESTIONS]
        singles = [forward_chunk(lm.model, saved.copy(), q)[:, -1] for q in qs]  # (1, V) each
        again = forward_chunk(lm.model, saved.copy(), qs[0])[:, -1]
        assert torch.equal(again, singles[0])  # earlier questions left the loaded cache untouched
        T = max(q.shape[1] for q in qs)
        batch = torch.cat([torch.nn.functional.pad(q, (T - q.shape[1], 0)) for q in qs])  # (3, T) left padded
        am = torch.stack([torch.arange(T) >= T - q.shape[1] for q in qs]).long()
        out = forward_chunk(lm.model, saved.copy(batch_size=3), batch, am)[:, -1]  # (3, V)
    for b in range(3):
        assert (out[b] - singles[b][0]).abs().max() < 1e-10


def test_a_saved_batch_round_trips(tmp_path):
    lm = make_lm("mistral", "ep")
    lm.tokenizer.padding_side = "left"
    enc = lm.tokenizer([DOC, "One. Two. Three"], padding=True, return_tensors="pt", add_special_tokens=False)
    q = ids_of(lm, QUESTIONS[1]).expand(2, -1)
    with torch.no_grad():
        cache = make_cache(lm, "anchor")
        prefill(lm.model, cache, enc["input_ids"], enc["attention_mask"], chunk_size=7)
        save_cache(cache, lm, tmp_path / "two.kv")
        loaded = load_cache(lm, tmp_path / "two.kv")
        mem, got = forward_chunk(lm.model, cache, q), forward_chunk(lm.model, loaded, q)
    assert loaded.meta.token.shape[0] == 2 and (got - mem).abs().max() <= 1e-10


def write_v1(cache, lm, path, anchor_kind=None):
    """A cache file as anllm wrote it in format version 1 (the anchor kind under ``anchor_mode``), written out by
    hand from the format's description so that it does not depend on today's writer."""
    tensors = {f"meta.{f}": getattr(cache.meta, f) for f in ("token", "pos", "seg", "anchor", "valid")}  # (B, K)
    tensors.update({c: getattr(cache, c) for c in ("n_seen", "n_seg", "n_evicted", "n_run")})  # (B,)
    for i, layer in enumerate(cache.layers):
        tensors[f"layer.{i}.keys"], tensors[f"layer.{i}.values"] = layer.keys, layer.values  # (B, H_kv, K, D)
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    model = {
        "name": lm.name,
        "dtype": str(lm.model.dtype).removeprefix("torch."),
        "weights": cache_io.weights_fingerprint(lm.model),
        "tokenizer": cache_io.tokenizer_fingerprint(lm.tokenizer),
        "anchor_mode": anchor_kind or lm.anchor.kind,
        "anchor_ids": list(lm.anchor_ids),
        "position_policy": lm.anchor.position_policy,
        "max_segment": lm.anchor.max_segment,
    }
    record = {
        "format": "anllm-cache",
        "version": 1,
        "model": model,
        "policy": {"name": type(cache.policy).name, "params": dataclasses.asdict(cache.policy)},
        "cache_anchor_ids": list(cache.anchor_ids),
        "cache_position_policy": cache.position_policy,
        "cache_max_segment": cache.max_segment,
        "extra": {},
    }
    header = json.dumps(record, ensure_ascii=False, sort_keys=True)
    h = hashlib.blake2b(digest_size=16)
    h.update(header.encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    save_file(tensors, str(path), metadata={"anllm": header, "checksum": h.hexdigest()})


@pytest.mark.parametrize("anchors", ["ep", "ac"])
def test_a_version_1_file_still_loads_and_continues_exactly(tmp_path, anchors):
    lm = make_lm("llama", anchors)
    q = ids_of(lm, QUESTIONS[0])
    with torch.no_grad():
        cache = compressed(lm, "streaming:sink=2,window=6")
        write_v1(cache, lm, tmp_path / "old.kv")
        loaded = load_cache(lm, tmp_path / "old.kv")
        mem, got = forward_chunk(lm.model, cache, q), forward_chunk(lm.model, loaded, q)
    assert loaded.policy == cache.policy and int(loaded.n_evicted[0]) > 0
    assert torch.equal(got, mem)
    write_v1(compressed(lm, "anchor"), lm, tmp_path / "other.kv", anchor_kind="ac" if anchors == "ep" else "ep")
    with pytest.raises(AnLLMError, match=f"anchor kind {'ac' if anchors == 'ep' else 'ep'} but the model uses"):
        load_cache(lm, tmp_path / "other.kv")


def test_a_new_file_names_the_anchor_kind(tmp_path):
    lm = make_lm("llama", "ac")
    with torch.no_grad():
        save_cache(compressed(lm, "anchor"), lm, tmp_path / "doc.kv")
    with safe_open(str(tmp_path / "doc.kv"), framework="pt") as f:
        record = json.loads(f.metadata()["anllm"])
    assert record["version"] == 2 and record["model"]["anchor_kind"] == "ac" and "anchor_mode" not in record["model"]


# -- refusals ----------------------------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    lm = make_lm("llama", "ep")
    with torch.no_grad():
        save_cache(compressed(lm, "anchor"), lm, tmp_path / "doc.kv")
    return lm, tmp_path / "doc.kv"


def _other_adapter(lm):
    """The same base with a small change to one projection, like another merged LoRA adapter."""
    other = make_lm("llama", "ep")
    with torch.no_grad():
        other.model.model.layers[0].self_attn.q_proj.weight.add_(1e-3)
    return other


def _other_tokenizer(lm):
    other = make_lm("llama", "ep")
    other.tokenizer.add_tokens(["<extra>"])
    return other


@pytest.mark.parametrize(
    "change,words",
    [
        (lambda lm: make_lm("llama", "ep", seed=1), "different weights or adapter"),
        (_other_adapter, "different weights or adapter"),
        (lambda lm: make_lm("mistral", "ep"), "different weights or adapter"),
        (_other_tokenizer, "different tokenizer"),
        (lambda lm: make_lm("llama", "ep", dtype=torch.float32), "float64 K/V but the model is loaded in float32"),
        (lambda lm: make_lm("llama", "ep", anchor_chars="."), "anchor_ids"),
        (lambda lm: make_lm("llama", "ep", position_policy="compact"), "position_policy true"),
        (lambda lm: make_lm("llama", "ep", max_segment=8), "max_segment 0"),
    ],
)
def test_a_different_model_is_refused_naming_the_mismatch(saved, change, words):
    lm, path = saved
    with pytest.raises(AnLLMError) as e:
        load_cache(change(lm), path)
    assert words in str(e.value)


def test_a_different_policy_is_refused(saved):
    lm, path = saved
    assert load_cache(lm, path, policy="anchor").policy == lm.policy("anchor")
    for policy in ("full", "anchor:window=4", "streaming"):
        with pytest.raises(AnLLMError, match="computed with policy anchor"):
            load_cache(lm, path, policy=policy)
    with pytest.warns(DeprecationWarning, match="mode= will be removed"):
        assert load_cache(lm, path, mode="anchor").policy == lm.policy("anchor")  # the former keyword
    with pytest.raises(TypeError, match="both policy= and its former name mode="):
        load_cache(lm, path, policy="anchor", mode="anchor")


def _rewrite(path, **metadata_changes):
    """Rewrite the file with changed header metadata (the tensors kept), as a hand edit would."""
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    for key, fn in metadata_changes.items():
        meta[key] = fn(meta[key])
    save_file(tensors, str(path), metadata=meta)


def _edit_record(text):
    record = json.loads(text)
    record["policy"]["params"]["window"] = 3
    return json.dumps(record)


@pytest.mark.parametrize(
    "damage,words",
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not a readable anllm cache file"),
        (lambda p: p.write_bytes(p.read_bytes()[:5]), "not a readable anllm cache file"),
        (lambda p: p.write_bytes(b"\x00not a cache at all{" * 10), "not a readable anllm cache file"),
        (lambda p: p.write_bytes(p.read_bytes()[:-1] + bytes([p.read_bytes()[-1] ^ 0xFF])), "checksum mismatch"),
        (lambda p: _rewrite(p, anllm=_edit_record), "checksum mismatch"),
        (lambda p: _rewrite(p, anllm=lambda s: s[:-3]), "not JSON"),
        (lambda p: save_file({"x": torch.zeros(2)}, str(p)), "no anllm record"),
        (lambda p: p.unlink(), "does not exist"),
    ],
)
def test_damaged_files_raise_clear_errors(saved, damage, words):
    lm, path = saved
    damage(path)
    with pytest.raises(AnLLMError) as e:
        load_cache(lm, path)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_crash_mid_write_leaves_the_old_file(saved, monkeypatch):
    lm, path = saved
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(cache_io, "save_file", crash)
    with torch.no_grad(), pytest.raises(KeyboardInterrupt):
        save_cache(compressed(lm, "anchor", DOC + " More text. And more"), lm, path)
    assert path.read_bytes() == before and sorted(os.listdir(path.parent)) == ["doc.kv"]
    assert int(load_cache(lm, path).n_seen[0]) == ids_of(lm, DOC).shape[1]


def test_saving_needs_a_folder_and_a_filled_cache(tmp_path):
    lm = make_lm("llama", "ep")
    with pytest.raises(AnLLMError, match="does not exist"):
        save_cache(compressed(lm, "anchor"), lm, tmp_path / "nope" / "doc.kv")
    with pytest.raises(AnLLMError, match="empty"):
        save_cache(make_cache(lm, "anchor"), lm, tmp_path / "doc.kv")


# -- command line ------------------------------------------------------------------------------------------------
def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_compress_then_generate_from_the_file(tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC * 3, encoding="utf-8")
    kv = tmp_path / "doc.kv"
    code, out, _ = run_cli(
        capsys, "compress", "--model", "tiny-random", "--text-file", doc, "-o", kv, "--mode", "anchor"
    )
    assert code == 0 and kv.is_file()
    assert "tokens read" in out and "entries kept" in out and str(kv) in out
    code, out, err = run_cli(
        capsys,
        "generate",
        "--model",
        "tiny-random",
        "--cache",
        kv,
        "--prompt",
        "Who?",
        "--max-new-tokens",
        "3",
        "--json",
    )
    summary = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and summary["summary"] and summary["prompt_tokens"] > 0
    assert summary["kv_full_entries"] > len(DOC * 3) > summary["kv_entries"]  # continued the compressed document


@pytest.mark.parametrize(
    "how,message",
    [
        ("missing", "does not exist"),
        ("corrupt", "not a readable anllm cache file"),
        ("mode", "computed with policy anchor"),
    ],
)
def test_generate_with_a_bad_cache_exits_2_with_one_line(tmp_path, capsys, how, message):
    kv = tmp_path / "doc.kv"
    extra = []
    if how != "missing":
        lm = load_model("tiny-random")
        with torch.no_grad():
            save_cache(compressed(lm, "anchor"), lm, kv)
    if how == "corrupt":
        kv.write_bytes(kv.read_bytes()[:100])
    if how == "mode":
        extra = ["--mode", "full"]
    code, out, err = run_cli(capsys, "generate", "--model", "tiny-random", "--cache", kv, "--prompt", "Who?", *extra)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err


# -- the default model -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_default_model_loaded_cache_is_exact_float64(tmp_path):
    from anllm.chat import compress

    lm = load_model("default", dtype=torch.float64)
    text = (
        "The lighthouse stood at the edge of the cliff. Every night its lamp turned slowly over the dark water. "
        "Sailors trusted it more than their charts! Had it ever failed them? Only once, in the storm of the old "
        "winter. The keeper still talks about that night"
    )
    with torch.no_grad():
        session = compress(lm, text, "anchor")
        session.save(tmp_path / "doc.kv")
        saved = read_cache(lm, tmp_path / "doc.kv")
        assert saved.extra["chat"]["ids"] == session.ids and int(session.cache.n_evicted[0]) > 0
        doc = torch.tensor([session.ids])
        q = torch.tensor([lm.tokenizer("When did the lamp fail? Answer briefly.")["input_ids"]])
        mem = forward_chunk(lm.model, session.cache, q)
        got = forward_chunk(lm.model, saved.cache, q)
        ref = reference_logits(lm, session.cache.policy, torch.cat([doc, q], 1))[:, doc.shape[1] :]
    assert (got - mem).abs().max() <= 1e-10
    assert (got - ref).abs().max() <= 1e-4


def test_tokenizer_fingerprint_follows_changes_to_the_same_tokenizer():
    tok = make_lm("llama", "ep").tokenizer
    first = cache_io.tokenizer_fingerprint(tok)
    assert cache_io.tokenizer_fingerprint(tok) == first
    tok.chat_template = "{{ messages }}"
    second = cache_io.tokenizer_fingerprint(tok)
    tok.add_tokens(["<new>"])
    assert len({first, second, cache_io.tokenizer_fingerprint(tok)}) == 3


def test_the_former_cache_save_names_its_replacement(tmp_path):
    lm = make_lm("llama", "ep")
    with pytest.raises(AnLLMError, match=r"use anllm.cache_io.save_cache\(cache, lm, path"):
        compressed(lm, "anchor").save(tmp_path / "doc.kv", lm)
    assert not (tmp_path / "doc.kv").exists()
