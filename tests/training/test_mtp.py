"""`Transformer.mtp_loss` (DeepSeek-V3 report §2.2): depth-k module predicts token t + 1 + k from the main model's
final hidden state at t and the embedding of token t + k. Checked against a recomputation from the module's parts
(fp32, 1e-6), with padding ignored and gradients reaching the MTP module, the shared embedding and head."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multimodal.backbone.transformer import Transformer
from multimodal.config import preset


def model_with_mtp(depth: int) -> Transformer:
    torch.manual_seed(0)
    return Transformer(preset("debug").replace(num_nextn_predict_layers=depth))


def manual_mtp_loss(model: Transformer, ids: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    b, s = ids.shape
    h, losses = hidden, []
    for k, module in enumerate(model.mtp, start=1):
        ctx = model.make_context(b, s - k, ids.device, mask[:, : s - k] if mask is not None else None, None, None,
                                 ids[:, k:])
        e = module.enorm(model.embed(ids[:, k:]))
        x = module.eh_proj(torch.cat([e, module.hnorm(h[:, : s - k])], dim=-1))
        x = x.unsqueeze(2).expand(-1, -1, model.config.hyper.hc_mult, -1).contiguous()
        h = module.norm(module.hc_head(module.block(x, ctx, None)))
        logits = model.head(h[:, :-1])
        target = ids[:, k + 1:]
        if mask is not None:
            target = target.masked_fill(mask[:, k + 1:] == 0, -100)
        losses.append(F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100))
    return torch.stack(losses).mean()


def test_mtp_loss_equals_manual_recomputation():
    model = model_with_mtp(2)
    ids = torch.randint(0, 512, (2, 12))
    hidden = model(ids).hidden_states
    torch.testing.assert_close(model.mtp_loss(ids, hidden), manual_mtp_loss(model, ids, hidden, None))


def test_mtp_loss_ignores_padding_targets():
    model = model_with_mtp(1)
    ids = torch.randint(0, 512, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 8:] = 0
    hidden = model(ids, attention_mask=mask).hidden_states
    loss = model.mtp_loss(ids, hidden, mask)
    torch.testing.assert_close(loss, manual_mtp_loss(model, ids, hidden, mask))
    unmasked = model.mtp_loss(ids, hidden, None)
    assert not torch.allclose(unmasked, loss)


def test_mtp_gradients_and_scale():
    model = model_with_mtp(1)
    ids = torch.randint(0, 512, (2, 10))
    loss = model.mtp_loss(ids, model(ids).hidden_states)
    assert abs(loss.item() - torch.log(torch.tensor(512.0)).item()) < 1.0          # ~ln V at initialisation
    loss.backward()
    assert model.mtp[0].eh_proj.weight.grad.abs().sum() > 0
    assert model.embed.weight.grad.abs().sum() > 0 and model.head.weight.grad.abs().sum() > 0


def test_no_mtp_or_too_short_gives_zero():
    model = model_with_mtp(0)
    ids = torch.randint(0, 512, (1, 6))
    assert model.mtp_loss(ids, model(ids).hidden_states).item() == 0.0
    deep = model_with_mtp(1)
    short = torch.randint(0, 512, (1, 2))
    assert deep.mtp_loss(short, deep(short).hidden_states).item() == 0.0
