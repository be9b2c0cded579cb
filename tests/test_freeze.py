"""Layer groups cover every parameter once; locking freezes exactly the requested groups."""
import pytest
import torch

import climp


@pytest.mark.parametrize("name", ["climp-tiny", "clip-vit-tiny", "climp-mamba1d-tiny", "clip-mamba-simba-s"])
def test_groups_partition_each_tower(name):
    with torch.device("meta"):
        model = climp.create_model(name)
    for tower in (model.visual, model.text):
        groups = tower.layer_groups()
        ids = [id(p) for g in groups for p in g]
        assert len(ids) == len(set(ids)) == len(list(tower.parameters()))
        assert all(groups), "every group holds parameters"


@pytest.mark.parametrize("pool", ["avg", "attn", "pyramid"])
def test_vmamba_pooling_heads_belong_to_the_head_group(pool):
    from climp.models.vmamba import VMambaConfig, VMambaVisionTower

    tower = VMambaVisionTower(VMambaConfig(dims=16, depths=[1, 1], pool=pool), embed_dim=8)
    groups = tower.layer_groups()
    names = {id(p): n for n, p in tower.named_parameters()}
    head = {names[id(p)] for p in groups[-1]}
    assert len([p for g in groups for p in g]) == len(list(tower.parameters()))
    assert head == {n for n in names.values() if n.startswith(("norm.", "stage_norms.", "attn_pool.", "head."))}
    assert any(n.startswith({"avg": "norm.", "attn": "attn_pool.", "pyramid": "stage_norms."}[pool]) for n in head)


def test_lock_all_but_last_two_groups():
    with torch.device("meta"):
        model = climp.create_model("climp-tiny")
    model.lock_text_tower(unlocked_groups=2)
    trainable = {n for n, p in model.text.named_parameters() if p.requires_grad}
    last_layer = f"backbone.layers.{model.text.cfg.n_layer - 1}."
    assert trainable and all(n.startswith((last_layer, "backbone.norm_f.", "proj.")) for n in trainable)
    assert any(n.startswith(last_layer) for n in trainable) and "proj.weight" in trainable
    model.lock_image_tower()
    assert not any(p.requires_grad for p in model.visual.parameters())
    assert model.logit_scale.requires_grad
    with pytest.raises(ValueError, match="unlocked_groups must be in"):
        model.visual.lock(1000)
