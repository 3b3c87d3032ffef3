"""The vLLM plugin's tiled, batched attention (anllm.serving.vllm.tiles) equals dense attention under the AnSAN mask
over every token, on random tensors and random anchor layouts (docs/serving.md). Pure torch: runs in the main venv."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anllm.serving.export import ServedAnchor
from anllm.serving.vllm import tiles
from anllm.serving.vllm.flags import AnchorFlags
from anllm.serving.vllm.rows import blocks_for, request_rows, row_slots
from anllm.serving.vllm.step import compute_step
from anllm.serving.vllm.visibility import request_visibility

H, H_KV, D, BS = 6, 2, 8, 8
SETTINGS = [
    ServedAnchor(kind="ep", anchor_ids=(5, 9), n_sink=1, window=24, max_segment=48),  # the served setting
    ServedAnchor(kind="ep", anchor_ids=(5, 9), n_sink=3, window=0, max_segment=6),  # no window, several sinks
    ServedAnchor(kind="ep", anchor_ids=(5,)),  # no forced anchors: sentences as long as the text makes them
    ServedAnchor(kind="ac", anchor_ids=(5,), anchors_see_anchors=True, window=7, max_segment=11),
]


def random_tokens(n: int, g: torch.Generator, p_anchor: float) -> torch.Tensor:
    t = torch.randint(10, 40, (n,), generator=g)
    t[torch.rand(n, generator=g) < p_anchor] = 5
    return t


def dense_reference(tokens, n_computed, served, q, k, v):
    """SDPA of the step's queries over every token of the request, masked by the one-pass AnSAN rule."""
    mask = request_visibility(tokens, n_computed, served)  # (Q, L)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask,
                                         scale=D**-0.5, enable_gqa=True)  # fmt: skip
    return out.transpose(0, 1)  # (Q, H, D)


def mixed_step(served, seed, device="cpu", dtype=torch.float32):
    """Requests decoding, starting and continuing a prefill in one step, their kept rows in a paged ``dtype`` cache on
    ``device``: ``(out, expected, step)``, the tiles' output and the dense one-pass result (float32, same inputs)."""
    g = torch.Generator().manual_seed(seed)
    p_anchor = [0.0, 0.05, 0.3][seed]  # no anchor at all, sparse anchors, dense anchors
    # (tokens computed, tokens this step): decodes, a fresh prefill longer than a tile, a chunk continuing one
    shape = [(300, 1), (0, 150), (200, 1), (97, 130), (5, 1), (64, 64)]
    lengths = [nc + q for nc, q in shape]
    token_ids = np.zeros((len(shape), max(lengths)), dtype=np.int64)
    n_blocks = np.zeros(len(shape), dtype=np.int64)
    block_rows = np.zeros((len(shape), 64), dtype=np.int64)
    cache = torch.zeros(400, H_KV, BS, 2 * D)
    queries, inputs, expected, next_block = [], [], [], 1  # block 0 stays empty (vLLM's null block)
    for i, (nc, q) in enumerate(shape):
        t = random_tokens(nc + q, g, p_anchor)
        token_ids[i, : nc + q] = t.numpy()
        r = request_rows(t, nc, served)
        n_rows = r.n_before + q
        n_blocks[i] = blocks_for(n_rows, BS)
        block_rows[i, : n_blocks[i]] = np.arange(next_block, next_block + n_blocks[i])[::-1]  # any order
        next_block += n_blocks[i]
        k, v = torch.randn(nc + q, H_KV, D, generator=g), torch.randn(nc + q, H_KV, D, generator=g)
        qq = torch.randn(q, H, D, generator=g)
        slots = row_slots(torch.from_numpy(block_rows[i, : n_blocks[i]].copy()), torch.arange(n_rows), BS)
        cache[slots // BS, :, slots % BS] = torch.cat([k[r.key_pos], v[r.key_pos]], -1)  # the kept rows, then new
        queries.append(qq)
        inputs.append((qq, k, v))
        expected.append(dense_reference(t, nc, served, qq, k, v))
    flags = AnchorFlags(served)  # the worker's store, seen up to half of each request's earlier tokens
    for i, (nc, _) in enumerate(shape):
        flags.flags(str(i), token_ids[i, : nc // 2])
    step = compute_step([str(i) for i in range(len(shape))], token_ids, np.array([s[0] for s in shape]),
                        np.array([s[1] for s in shape]), block_rows, n_blocks, BS, served, flags)  # fmt: skip
    query = torch.cat(queries + [torch.randn(3, H, D, generator=g)])  # (tokens + padding, H, D)
    query, cache = query.to(device, dtype), cache.to(device, dtype)
    if dtype != torch.float32:  # the reference sees the same rounded inputs, computed in float32
        expected = [
            dense_reference(torch.from_numpy(token_ids[i, : nc + q]), nc, served, *(x.to(dtype).float() for x in xs))
            for i, ((nc, q), xs) in enumerate(zip(shape, inputs))
        ]
    out = torch.full_like(query, float("nan"))
    tiles.attend(step.groups, query, cache, D**-0.5, out)
    return out.float().cpu(), torch.cat(expected), step


@pytest.mark.parametrize("served", SETTINGS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_mixed_step_equals_dense_attention_over_every_token(served, seed):
    """The step's tile groups, read from a paged cache holding only the kept rows, give each query the dense one-pass
    result; padded tokens are left alone."""
    out, expected, step = mixed_step(served, seed)
    torch.testing.assert_close(out[: step.query_start[-1]], expected, atol=1e-5, rtol=1e-5)
    assert torch.isnan(out[step.query_start[-1] :]).all()  # padded tokens are left alone
    assert sorted(gr.q_idx.shape[1] for gr in step.groups) == [1, tiles.TILE]  # one call per tile size
    assert all(bool(gr.mask.any(-1).all()) for gr in step.groups)  # no query, padded or not, sees nothing


@pytest.mark.gpu
def test_the_tiles_run_on_a_gpu_cache():
    """The same steps with the cache and queries on CUDA, float32 and bfloat16 (the tiles are built on the host and
    follow the cache); bench/gpu_check.sh runs it."""
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):  # bfloat16 keeps 8 bits of mantissa
        for served in SETTINGS:
            out, expected, step = mixed_step(served, 1, "cuda", dtype)
            torch.testing.assert_close(out[: step.query_start[-1]], expected, atol=tol, rtol=tol)
            assert torch.isnan(out[step.query_start[-1] :]).all()


@pytest.mark.parametrize("served", SETTINGS)
def test_tiles_keep_every_visible_row_and_drop_the_rest(served):
    g = torch.Generator().manual_seed(4)
    t = random_tokens(700, g, 0.04)
    r = request_rows(t, 400, served)
    slots = torch.arange(r.mask.shape[1]) + 100
    ts = tiles.request_tiles(10, slots, r.mask)
    assert torch.equal(torch.cat([q for q, _, _ in ts]), torch.arange(10, 310))
    for q_idx, s, m in ts:
        full = r.mask[q_idx - 10]  # (t, L)
        cols = s - 100
        assert torch.equal(m, full[:, cols]) and full[:, cols].any(0).all()  # only seen rows, each seen by someone
        hidden = torch.ones(full.shape[1], dtype=torch.bool)
        hidden[cols] = False
        assert not full[:, hidden].any()  # no visible row dropped
        if served.max_segment:  # forced anchors bound the open sentence: a tile reads less than the whole chunk
            assert m.shape[1] < int(r.mask.any(0).sum())


def test_a_decode_query_is_a_tile_of_one():
    mask = torch.tensor([[True, False, True, True]])
    ((q_idx, s, m),) = tiles.request_tiles(7, torch.tensor([3, 4, 5, 6]), mask)
    assert q_idx.tolist() == [7] and s.tolist() == [3, 5, 6] and m.all()
