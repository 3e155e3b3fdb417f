"""The flow-matching heads: shapes, positions, batching, conditioning, and that training + sampling reach the data."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from multimodal.decoders.flow import FlowHeadConfig, condition_grid, flow_matching_loss, grid_position_features
from multimodal.decoders.image import ImageHead
from multimodal.decoders.video import VideoHead, latent_frames


def small(**kw) -> FlowHeadConfig:
    base = dict(latent_channels=4, width=32, depth=2, num_heads=2, cond_dim=8, frequency_dim=32, position_frequencies=4)
    return FlowHeadConfig(**{**base, **kw})


def randomise(head: torch.nn.Module) -> None:
    """Give the zero-initialised adaLN / output layers random weights (as after training)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in head.parameters():
            if p.abs().sum() == 0 and p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_grid_positions_are_distinct_per_time_row_column():
    pos = grid_position_features(3, 4, 5, 8, torch.device("cpu"))
    assert pos.shape == (60, 48)
    d = torch.cdist(pos, pos)
    assert d[~torch.eye(60, dtype=torch.bool)].min() > 0.05


def test_untrained_head_predicts_zero_velocity_and_shapes():
    head = VideoHead(small(max_latent_frames=3)).eval()
    x = torch.randn(2, 4, 3, 4, 6)
    v = head(x, torch.tensor([10.0, 900.0]), torch.randn(2, 5, 8))
    assert v.shape == x.shape and v.abs().max() == 0                         # adaLN-Zero
    assert head.latent_shape(2, 9, 32, 48, 4, 8) == (2, 4, 3, 4, 6)
    with pytest.raises(ValueError, match="longer than"):
        head.latent_shape(1, 13, 32, 32, 4, 8)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        latent_frames(8, 4)
    image = ImageHead(small())
    assert image.latent_shape(1, 64, 32, 8) == (1, 4, 1, 8, 4)
    assert image(torch.randn(1, 4, 8, 4), torch.tensor([5.0]), torch.randn(1, 2, 8)).shape == (1, 4, 8, 4)
    with pytest.raises(ValueError, match="multiples of 8"):
        image.latent_shape(1, 60, 64, 8)
    with pytest.raises(ValueError, match="one latent frame"):
        ImageHead(small(max_latent_frames=2))


def test_batched_equals_one_by_one_and_condition_matters():
    head = VideoHead(small(max_latent_frames=2)).eval()
    randomise(head)
    x, t, c = torch.randn(3, 4, 2, 4, 4), torch.tensor([100.0, 500.0, 999.0]), torch.randn(3, 6, 8)
    with torch.no_grad():
        batched = head(x, t, c)
        alone = torch.cat([head(x[i:i + 1], t[i:i + 1], c[i:i + 1]) for i in range(3)])
        other = head(x, t, torch.randn(3, 6, 8))
        frame0 = head(x[:, :, :1], t, c)
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    assert (batched - other).abs().mean() > 1e-3
    assert (batched[:, :, :1] - frame0).abs().mean() > 1e-4              # frames attend to each other


def test_masked_condition_tokens_are_ignored():
    head = ImageHead(small()).eval()
    randomise(head)
    x, t = torch.randn(1, 4, 1, 4, 4), torch.tensor([300.0])
    c = torch.randn(1, 4, 8)
    mask = torch.tensor([[True, True, False, False]])
    with torch.no_grad():
        a = head(x, t, c, mask)
        c2 = c.clone()
        c2[:, 2:] = 100.0
        b = head(x, t, c2, mask)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("prediction", ["velocity", "x0"])
def test_training_then_euler_sampling_reaches_the_conditioned_target(prediction):
    torch.manual_seed(0)
    head = ImageHead(small(width=64, prediction=prediction))
    x0 = torch.stack([torch.full((4, 1, 4, 4), 1.0), torch.full((4, 1, 4, 4), -1.0)])
    cond = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(250):
        loss = flow_matching_loss(head, x0, cond, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < 0.2 * sum(losses[:5]) / 5
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(20)
    x = torch.randn(2, 4, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(head(x, t.expand(2), cond), t, x).prev_sample
    means = x.mean(dim=(1, 2, 3, 4))
    assert means[0] > 0.7 and means[1] < -0.7                              # each condition gets its own target


def test_bf16_autocast_step_is_warning_free_and_close_to_fp32():
    """Under bf16 autocast (the GPU training recipe) the head's QK and condition norms see bf16 activations and fp32
    gains; they normalise in fp32 instead of tripping torch's fused-RMSNorm dtype-mismatch warning."""
    import warnings

    head = ImageHead(small())
    randomise(head)
    x, t, cond = torch.randn(2, 4, 1, 4, 4), torch.tensor([100.0, 800.0]), torch.randn(2, 3, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                      # any warning fails the test
        with torch.autocast("cpu", dtype=torch.bfloat16):
            v = head(x, t, cond)
            v.float().square().mean().backward()
    assert v.dtype == torch.bfloat16
    assert all(p.grad is not None for n, p in head.named_parameters() if "norm" in n)
    with torch.no_grad():
        ref = head(x, t, cond)
    assert (v.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_x0_prediction_returns_the_velocity_its_clean_latent_implies():
    """prediction="x0": the same weights' raw output is read as x0_hat and returned as (x_t - x0_hat) / sigma, with
    sigma clamped at X0_MIN_SIGMA; so an exact x0_hat gives exactly the training target noise - x0."""
    from multimodal.decoders.flow import X0_MIN_SIGMA

    velocity = ImageHead(small()).eval()
    randomise(velocity)
    x0_head = ImageHead(small(prediction="x0")).eval()
    x0_head.load_state_dict(velocity.state_dict())
    x, cond = torch.randn(3, 4, 1, 4, 4), torch.randn(3, 2, 8)
    sigma = torch.tensor([0.01, 0.3, 0.9])                     # the first is under the clamp
    with torch.no_grad():
        raw, v = velocity(x, sigma * 1000, cond), x0_head(x, sigma * 1000, cond)
    expected = (x - raw) / sigma.clamp(min=X0_MIN_SIGMA).view(3, 1, 1, 1, 1)
    torch.testing.assert_close(v, expected, atol=1e-5, rtol=1e-5)
    # the identity behind it: x_t = (1 - s) x0 + s noise  =>  (x_t - x0) / s = noise - x0
    x_clean, noise, s = torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4), 0.37
    torch.testing.assert_close(((1 - s) * x_clean + s * noise - x_clean) / s, noise - x_clean)


def test_unknown_prediction_is_rejected_by_name():
    with pytest.raises(ValueError, match="prediction must be one of velocity, x0, got 'eps'"):
        small(prediction="eps")


def test_spatial_condition_puts_each_token_on_its_region():
    """The condition read as a square grid, row-major, upsampled by nearest neighbour onto the head's token grid."""
    cond = torch.arange(4.0).view(1, 4, 1).expand(2, 4, 3)                          # token k holds k
    grid = condition_grid(cond, None, 4, 6)                                          # [2, 24, 3]
    expected = torch.tensor([[0, 0, 0, 1, 1, 1]] * 2 + [[2, 2, 2, 3, 3, 3]] * 2, dtype=torch.float32)
    assert torch.equal(grid[..., 0].view(2, 4, 6), expected.expand(2, 4, 6))
    masked = condition_grid(cond, torch.tensor([[True, False, True, True]] * 2), 4, 6)
    assert torch.equal(masked[0, :, 0].view(4, 6)[:2, 3:], torch.zeros(2, 3))       # a masked token gives zeros
    with pytest.raises(ValueError, match="square grid, got 5 tokens"):
        condition_grid(torch.randn(1, 5, 3), None, 4, 4)


def test_spatial_condition_starts_at_zero_then_conditions_by_region():
    """A head grown with `spatial_condition` computes what the head without it computes until its projection moves;
    then a change of one condition token changes the velocity most where that token's region lies."""
    plain = ImageHead(small()).eval()
    randomise(plain)
    grown = ImageHead(small(spatial_condition=True)).eval()
    missing, unexpected = grown.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["spatial_proj.bias", "spatial_proj.weight"] and not unexpected
    x, t, c = torch.randn(2, 4, 1, 8, 8), torch.tensor([200.0, 800.0]), torch.randn(2, 4, 8)
    with torch.no_grad():
        assert torch.equal(plain(x, t, c), grown(x, t, c))
        grown.spatial_proj.weight.copy_(torch.eye(32) * 3)
        base = grown(x, t, c)
        c2 = c.clone()
        c2[:, 3] += 5.0                                                              # the bottom-right token
        change = (grown(x, t, c2) - base).abs().mean(dim=(0, 1, 2))                 # [8, 8]
    assert change[4:, 4:].mean() > 2 * change[:4, :4].mean()
    with pytest.raises(ValueError, match="spatial_condition reads its condition as one frame's grid"):
        FlowHeadConfig(max_latent_frames=5, spatial_condition=True)
