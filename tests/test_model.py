"""open_clip models by name; text dropout in train mode only; checkpoints load in open_clip."""

from __future__ import annotations

import open_clip
import pytest
import torch

from smotune import model as model_mod
from smotune.config import ModelConfig
from smotune.errors import UserError


def _batch(tokenizer, n=8):
    torch.manual_seed(1)
    images = torch.randn(n, 3, 32, 32)
    texts = tokenizer([f"a red circle number {i}" for i in range(n)])
    return images, texts


def test_tiny_archs_are_registered():
    assert {"tiny-vit", "small-vit"} <= set(open_clip.list_models())


def test_unknown_arch_is_a_user_error():
    with pytest.raises(UserError, match="model.arch"):
        model_mod.create(ModelConfig(arch="ViT-Nope"))


def test_text_dropout_acts_in_train_mode_only():
    tok = model_mod.tokenizer("tiny-vit")
    images, texts = _batch(tok)
    m = model_mod.create(ModelConfig(text_dropout=0.3), seed=0)
    blocks = model_mod.text_blocks(m)
    assert all(isinstance(b.ls_1, torch.nn.Dropout) for b in blocks)
    assert all(b.ls_2.p == 0.3 for b in blocks)
    m.eval()
    with torch.no_grad():
        a, b = m.encode_text(texts), m.encode_text(texts)
    assert torch.equal(a, b)
    m.train()
    with torch.no_grad():
        c, d = m.encode_text(texts), m.encode_text(texts)
    assert not torch.allclose(c, d)
    # the vision tower is untouched: no dropout in its train-mode output
    with torch.no_grad():
        assert torch.equal(m.encode_image(images), m.encode_image(images))


def test_zero_dropout_equals_plain_open_clip():
    tok = model_mod.tokenizer("tiny-vit")
    _, texts = _batch(tok)
    ours = model_mod.create(ModelConfig(text_dropout=0.0), seed=0).train()
    torch.manual_seed(0)
    plain = open_clip.create_model("tiny-vit", pretrained=None).train()
    with torch.no_grad():
        assert torch.equal(ours.encode_text(texts), plain.encode_text(texts))


def test_checkpoint_with_dropout_loads_in_plain_open_clip(tmp_path):
    m = model_mod.create(ModelConfig(text_dropout=0.2), seed=3)
    path = tmp_path / "model.pt"
    model_mod.save_checkpoint(m, path)
    loaded = open_clip.create_model("tiny-vit", pretrained=str(path)).eval()
    tok = model_mod.tokenizer("tiny-vit")
    images, texts = _batch(tok)
    m.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.encode_text(texts), m.encode_text(texts))
        assert torch.allclose(loaded.encode_image(images), m.encode_image(images))


@pytest.mark.parametrize("arch", ["RN50", "ViT-B-32"])
def test_real_archs_build_by_name_with_dropout(arch):
    m = model_mod.create(ModelConfig(arch=arch, text_dropout=0.1), seed=0)
    assert len(model_mod.text_blocks(m)) == 12
    assert model_mod.set_text_dropout(m, 0.1) == 24
