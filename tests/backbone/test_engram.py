"""Engram conditional memory (mhc_engram.md §4, tests §8.9-16). fp32; equalities are exact unless stated."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multimodal.backbone.engram import Engram, canonical_ids, engram_primes, hash_ngrams
from multimodal.backbone.transformer import Transformer
from multimodal.config import EngramConfig, preset


def config(hc: bool = True, layers=(1, 2), **engram):
    kw = dict(layers=list(layers), table_size=1009, n_heads=2, d_mem=16, seed=7)
    kw.update(engram)
    return preset("debug").replace(vocab_size=1000, engram=EngramConfig(**kw),
                                   hyper={"enabled": hc, "hc_mult": 2 if hc else 1})


def model(cfg, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if ".engram.conv" in name:
                p.normal_(0, 0.3)                     # non-trivial conv (it is zero-initialised)
    return m


def test_canonical_ids_collapse_case_space_and_accents():
    ids = canonical_ids(["Apple", " apple", "APPLE", "Äpple", "banana", "\n", " ", "x\ufffd", "x\ufffd"]).tolist()
    assert ids[0] == ids[1] == ids[2] == ids[3] != ids[4]
    assert ids[5] == ids[6] and ids[7] == ids[8] and len(set(ids)) == 4
    assert canonical_ids(["Apple", " apple"]).tolist() == [0, 0]                     # deterministic


def test_addresses_are_fixed_across_runs_and_machines():
    """Expected ids recorded once: NumPy PCG64 multipliers and int64 wrapping are platform independent."""
    e = Engram(config(), 2)
    assert e.multipliers.tolist() == [1967456973581147, 2902965371663229, 1831193140617645]
    assert e.primes.tolist() == [[1031, 1033], [1039, 1049]]
    ids = torch.tensor([[5, 17, 999, 0, 42, 42, 7]])
    assert e.addresses(ids).tolist() == [[[386, 1111, 3091, 3507], [402, 1831, 2904, 4117],
                                          [633, 1716, 2479, 3893], [418, 1641, 2264, 3376],
                                          [768, 1703, 2756, 3572], [35, 1424, 3036, 3793],
                                          [201, 1241, 2084, 3286]]]


def test_torch_hash_equals_numpy_with_overflow():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 100_000, size=(3, 20))
    hist = rng.integers(0, 100_000, size=(3, 2))
    mult = np.array([2 ** 62 + 1, 2 ** 61 + 3, 2 ** 60 + 5], dtype=np.int64)        # products overflow int64
    primes = np.array([[1009, 1013], [1019, 1021]])
    full = np.concatenate([hist, ids], axis=1)
    with np.errstate(over="ignore"):
        expected = []
        mix = np.zeros_like(ids)
        for i in range(3):
            mix = mix ^ (full[:, 2 - i: 2 - i + 20] * mult[i])
            if i:
                expected.append(np.mod(mix[..., None], primes[i - 1]))             # floor mod: >= 0
    got = hash_ngrams(torch.from_numpy(ids), torch.from_numpy(hist), torch.from_numpy(mult), torch.from_numpy(primes))
    assert np.array_equal(got.numpy(), np.concatenate(expected, axis=-1))
    assert (got >= 0).all()


def test_address_locality():
    """The rows at t change iff x_t, x_{t-1} or x_{t-2} changes; never for x_{t-3} or future tokens."""
    e = Engram(config(), 1)
    ids = torch.randint(0, 1000, (1, 12), generator=torch.Generator().manual_seed(0))
    base = e.addresses(ids)
    for j in range(12):
        changed = ids.clone()
        changed[0, j] = (changed[0, j] + 1) % 1000
        diff = (e.addresses(changed) != base).any(-1)[0]                             # [S]
        assert diff.nonzero().flatten().tolist() == [t for t in range(12) if 0 <= t - j <= 2]


def test_ranges_primes_offsets_multipliers():
    cfg = config(layers=(0, 1, 2))
    primes = [p for layer in engram_primes(cfg.engram) for order in layer for p in order]
    assert len(set(primes)) == len(primes) == 3 * 2 * 2 and min(primes) >= 1009
    m = Transformer(cfg)
    for i in (0, 1, 2):
        e = m.layers[i].engram
        flat = e.primes.flatten()
        assert torch.equal(e.offsets, torch.cumsum(flat, 0) - flat)
        assert (e.multipliers % 2 == 1).all()
        assert e.table.weight.shape == (int(flat.sum()), 16 // 4)                   # rows = sum of primes
        rows = e.addresses(torch.randint(0, 1000, (2, 30))) - e.offsets
        assert (rows >= 0).all() and (rows < flat).all()


@pytest.mark.parametrize("hc", [True, False])
def test_zero_gate_reproduces_the_model_without_engram(hc):
    with_engram = model(config(hc))
    for i in (1, 2):
        with_engram.layers[i].engram.off = True
    plain_cfg = config(hc).replace(engram=EngramConfig(layers=[], table_size=1009, n_heads=2, d_mem=16))
    plain = Transformer(plain_cfg).eval()
    missing, unexpected = plain.load_state_dict(with_engram.state_dict(), strict=False)
    assert not missing and all(".engram." in k for k in unexpected)
    ids = torch.randint(0, 1000, (2, 9))
    with torch.no_grad():
        assert torch.equal(with_engram(ids).logits, plain(ids).logits)
        with_engram.layers[1].engram.off = False
        assert not torch.allclose(with_engram(ids).logits, plain(ids).logits)


def test_zero_initialised_conv_gives_y_equal_gated_value():
    torch.manual_seed(0)
    e = Engram(config(hc=False, layers=(1,)), 1)
    z = torch.randn(2, 5, 1, 32)
    assert torch.equal(e._conv(z, None), torch.zeros_like(z))


def test_conv_is_causal_with_dilation_n():
    e = Engram(config(hc=False, layers=(1,)), 1)
    with torch.no_grad():
        e.conv.weight.normal_()
    z = torch.randn(1, 16, 1, 32, requires_grad=True)
    t = 12
    e._conv(z, None)[0, t].sum().backward()
    touched = (z.grad[0, :, 0].abs().sum(-1) > 0).nonzero().flatten().tolist()
    assert touched == [t - 9, t - 6, t - 3, t]


def test_gates_are_per_stream_and_in_unit_interval():
    m = model(config(hc=True))
    e = m.layers[1].engram
    captured = {}
    e.norm_h.register_forward_hook(lambda mod, inp, out: captured.setdefault("h", out))
    e.norm_k.register_forward_hook(lambda mod, inp, out: captured.setdefault("k", out))
    with torch.no_grad():
        m(torch.randint(0, 1000, (1, 8)))
    dot = (captured["h"] * captured["k"]).sum(-1) / 32 ** 0.5                        # [B, S, M]
    gate = torch.sigmoid(dot.sign() * dot.abs().clamp(min=1e-6).sqrt())
    assert ((gate > 0) & (gate < 1)).all() and not torch.allclose(gate[..., 0], gate[..., 1])


@pytest.mark.parametrize("hc", [True, False])
def test_cached_decode_equals_full_forward(hc):
    m = model(config(hc), seed=1)
    ids = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        full = m(ids).logits
        cache = m.new_cache()
        steps = [m(ids[:, :5], cache=cache).logits] + [m(ids[:, t:t + 1], cache=cache).logits for t in range(5, 12)]
    assert (torch.cat(steps, 1) - full).abs().max() / full.abs().max() < 1e-5


def test_prefetched_rows_equal_in_layer_lookup_and_scale_with_tokens_only():
    m = model(config())
    ids = torch.randint(0, 1000, (2, 7))
    rows = m.prefetch_engram(ids, None, torch.device("cpu"))
    assert set(rows) == {1, 2} and all(r.shape == (2, 7, 16) for r in rows.values())   # tokens x (N-1)K x head_dim
    ctx = m.make_context(2, 7, torch.device("cpu"), None, None, None, ids)
    x = torch.randn(2, 7, 2, 32)
    with torch.no_grad():
        in_layer = m.layers[1].engram(x, ctx, None)
        ctx.engram_rows = rows
        prefetched = m.layers[1].engram(x, ctx, None)
    assert torch.equal(in_layer, prefetched)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (CUDA)")
def test_host_resident_table_equals_device_resident():
    m = model(config())
    ids = torch.randint(0, 1000, (2, 9))
    on_device = m.to("cuda")
    with torch.no_grad():
        ref = on_device(ids.cuda()).logits
        for i in (1, 2):
            on_device.layers[i].engram.table.to("cpu")
        assert on_device.layers[1].engram.table.weight.device.type == "cpu"
        assert torch.equal(on_device(ids.cuda()).logits, ref)


def test_bad_engram_configs_are_named():
    with pytest.raises(ValueError, match="table_size must be a prime number, got 1000"):
        EngramConfig(table_size=1000)
    with pytest.raises(ValueError, match="max_ngram .* must be >= 2, got 1"):
        EngramConfig(max_ngram=1, table_size=1009)
    with pytest.raises(ValueError, match=r"engram.layers \[5\] out of range"):
        preset("debug").replace(engram=EngramConfig(layers=[5], table_size=1009, n_heads=2, d_mem=16))


def test_checkpoint_round_trip_keeps_engram(tmp_path):
    from multimodal.convert.checkpoint import load_pretrained, save_pretrained

    m = model(config().replace(num_nextn_predict_layers=0))
    save_pretrained(m, tmp_path)
    back = load_pretrained(tmp_path)
    assert back.config.engram == m.config.engram
    ids = torch.randint(0, 1000, (2, 8))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, m(ids).logits)
