"""The pass-through cards' numbers are measured, not copied: re-measure them here."""
import pytest
import torch

import visionmix
from visionmix.profile import count_macs, count_params

FAST = ['mobilenetv2_100', 'efficientnet_b0', 'googlenet', 'densenet121', 'mobilenetv1_100', 'resnet50']


def _check(name: str) -> None:
    card = visionmix.model_card(name)
    model = visionmix.create_model(name)
    assert count_params(model) == card.params
    assert count_macs(model, card.input_size) / 1e9 == pytest.approx(card.gmacs, rel=0.005)
    if card.source == 'timm':
        cfg = model.pretrained_cfg
        assert tuple(cfg['input_size']) == card.input_size
        assert tuple(cfg['mean']) == pytest.approx(card.mean) and tuple(cfg['std']) == pytest.approx(card.std)


@pytest.mark.parametrize('name', FAST)
def test_classic_card_numbers(name):
    _check(name)


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(set(visionmix.list_models(source='timm')) - set(FAST)))
def test_classic_card_numbers_large(name):
    _check(name)


def test_vit_macs_count_fused_attention():
    # FlopCounterMode alone counts nothing for fused SDPA on CPU; count_macs routes attention through math.
    from torch.utils.flop_counter import FlopCounterMode

    model = visionmix.create_model('vit_small_patch16_224', depth=1).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, 224, 224))
    attention_macs = 2 * 197 * 197 * 384  # q @ k^T and attn @ v over all heads
    assert count_macs(model) - counter.get_total_flops() // 2 == attention_macs
