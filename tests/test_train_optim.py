"""Weight-decay groups, the warmup-cosine schedule, EMA and the losses against references."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from climp.train.ema import ModelEma
from climp.train.loss import create_loss, logit_init_overrides
from climp.train.optim import create_optimizer, create_scheduler, param_groups, warmup_cosine_factor
from train_standins import TinyClip


class SsmLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.in_proj = nn.Linear(4, 8)
        self.dt_proj = nn.Linear(2, 8)
        self.A_log = nn.Parameter(torch.zeros(8, 4))
        self.D = nn.Parameter(torch.ones(8))
        self.ln_1 = nn.LayerNorm(8)
        self.embedding = nn.Embedding(10, 8)
        self.marked = nn.Parameter(torch.zeros(3, 3))
        self.marked._no_weight_decay = True
        self.logit_scale = nn.Parameter(torch.ones([]))
        self.frozen = nn.Parameter(torch.zeros(2, 2), requires_grad=False)


def test_optimizer_is_fused_on_the_cpu_and_steps_as_the_per_parameter_adamw():
    # the fused kernel against torch's plain for-loop AdamW over the same groups, three steps
    torch.manual_seed(0)
    model, reference = SsmLike(), SsmLike()
    reference.load_state_dict(model.state_dict())
    optimizer = create_optimizer(model, lr=1e-2, weight_decay=0.1)
    assert optimizer.defaults["fused"] is True
    plain = torch.optim.AdamW(param_groups(reference, 0.1, 1e-2), lr=1e-2, betas=(0.9, 0.98), eps=1e-6,
                              foreach=False)
    for step in range(3):
        grads = {n: torch.randn_like(p) for n, p in model.named_parameters() if p.requires_grad}
        for net, opt in ((model, optimizer), (reference, plain)):
            for name, param in net.named_parameters():
                if param.requires_grad:
                    param.grad = grads[name].clone()
            opt.step()
    for (name, value), other in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(value, other, rtol=1e-6, atol=1e-7, msg=name)


def test_weight_decay_excludes_norms_biases_ssm_params_and_marked():
    model = SsmLike()
    no_decay, decay = param_groups(model, 0.2, lr=1.0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == sorted(
        ["embedding.weight", "in_proj.weight", "dt_proj.weight"])
    assert sorted(names[id(p)] for p in no_decay["params"]) == sorted(
        ["in_proj.bias", "dt_proj.bias", "A_log", "D", "ln_1.weight", "ln_1.bias", "marked", "logit_scale"])
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0


def test_learning_rate_multipliers_follow_the_longest_prefix():
    model = nn.ModuleDict({"visual": nn.Linear(2, 2), "text": nn.Linear(2, 2), "head": nn.Linear(2, 2)})
    optimizer = create_optimizer(model, lr=0.1, weight_decay=0.1,
                                 lr_multipliers={"visual.": 0.0, "text.": 2.0, "text.bias": 3.0})
    scheduler = create_scheduler(optimizer, warmup=2, total_steps=4)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lr_of[id(model["visual"].weight)] == 0.0
    assert lr_of[id(model["text"].weight)] == pytest.approx(0.1)  # 0.1 * 2.0 * warmup factor 0.5
    assert lr_of[id(model["text"].bias)] == pytest.approx(0.15)
    assert lr_of[id(model["head"].weight)] == pytest.approx(0.05)
    before = model["visual"].weight.detach().clone()
    loss = sum(m(torch.ones(1, 2)).sum() for m in model.values())
    loss.backward()
    optimizer.step()
    scheduler.step()
    assert torch.equal(model["visual"].weight, before)  # multiplier 0 freezes through the optimiser


def test_schedule_warmup_then_cosine_to_zero():
    factors = [warmup_cosine_factor(s, 4, 12) for s in range(13)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[8] == pytest.approx(0.5)  # half way through the 8 decay steps
    assert factors[12] == pytest.approx(0.0, abs=1e-12)
    model = nn.Linear(2, 2)
    optimizer = create_optimizer(model, lr=0.1, weight_decay=0.0)
    scheduler = create_scheduler(optimizer, warmup=4, total_steps=12)
    seen = []
    for _ in range(12):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.1 * (s + 1) / 4 if s < 4 else 0.05 * (1 + math.cos(math.pi * (s - 4) / 8)) for s in range(12)]
    assert seen == pytest.approx(expected)


def test_ema_follows_formula_with_warmup():
    model = nn.Linear(3, 2)
    ema = ModelEma(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # first update: decay min(0.9, 1/10) = 0.1
    expected = 0.1 * start["weight"] + 0.9 * model.weight
    torch.testing.assert_close(ema.module.weight, expected)
    for _ in range(200):
        ema.update(model)
    assert ema.current_decay() == 0.9
    torch.testing.assert_close(ema.module.weight, model.weight.detach(), rtol=0, atol=1e-6)
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError):
        ModelEma(model, decay=1.0)


def _reference_clip_loss(img, txt, scale):
    logits = scale * img @ txt.T
    n = len(img)
    total = 0.0
    for i in range(n):  # row by row cross-entropy, both directions
        total = total - torch.log_softmax(logits[i], 0)[i] - torch.log_softmax(logits[:, i], 0)[i]
    return total / (2 * n)


def _reference_siglip_loss(img, txt, scale, bias):
    n = len(img)
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = scale * img[i] @ txt[j] + bias
            total = total - F.logsigmoid(z if i == j else -z)
    return total / n


def test_losses_match_loop_references():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(6, 5), dim=-1), F.normalize(torch.randn(6, 5), dim=-1)
    scale, bias = torch.tensor(7.0), torch.tensor(-3.0)
    torch.testing.assert_close(create_loss("clip")(img, txt, scale), _reference_clip_loss(img, txt, scale))
    torch.testing.assert_close(create_loss("siglip")(img, txt, scale, bias),
                               _reference_siglip_loss(img, txt, scale, bias))
    with pytest.raises(ValueError, match="unknown loss"):
        create_loss("triplet")


def test_siglip_overrides_give_bias_and_small_scale():
    overrides = logit_init_overrides("siglip")
    assert overrides == {"init_logit_scale": pytest.approx(math.log(10)), "init_logit_bias": -10.0}
    model = TinyClip(**overrides)
    assert model.logit_bias.item() == -10.0 and model.logit_scale.exp().item() == pytest.approx(10.0)
    assert logit_init_overrides("clip") == {}
