import subprocess
import sys

import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import visionmix
from visionmix.errors import CheckpointError
from visionmix.registry import FAMILIES, ModelCard, UnknownModelError, register_visionmix_model

CLASSIC = ['vit_small_patch16_224', 'vit_base_patch16_224', 'swin_tiny_patch4_window7_224', 'mixer_s16_224',
           'mixer_b16_224', 'mixer_l16_224', 'vgg16_bn', 'googlenet', 'inception_v3', 'inception_v4',
           'inception_resnet_v2', 'resnet50', 'densenet121', 'mobilenetv1_100', 'mobilenetv2_100', 'efficientnet_b0',
           'regnetx_040', 'regnety_040']


def test_classic_models_are_listed_with_cards():
    names = visionmix.list_models()
    for name in CLASSIC:
        assert name in names
        card = visionmix.model_card(name)
        assert card.source in ('timm', 'torchvision')
        assert card.paper and card.arxiv and card.params > 0 and card.gmacs > 0


def test_every_card_is_complete():
    for name in visionmix.list_models():
        card = visionmix.model_card(name)
        assert card.name == name
        assert card.family in FAMILIES
        for field in ('paper', 'code_url', 'code_commit', 'license', 'verified', 'macs_counter', 'top1_source'):
            assert getattr(card, field), f'{name}: empty {field}'
        assert len(card.input_size) == 3 and len(card.mean) == len(card.std) == 3


def test_list_models_filters():
    assert visionmix.list_models('mixer_*') == ['mixer_b16_224', 'mixer_l16_224', 'mixer_s16_224']
    assert 'resnet50' in visionmix.list_models('resnet')
    conv = visionmix.list_models(family='conv')
    assert 'resnet50' in conv and 'vit_small_patch16_224' not in conv
    assert set(visionmix.list_models(family='transformer')) >= {'vit_small_patch16_224', 'swin_tiny_patch4_window7_224'}
    assert visionmix.list_models(source='torchvision') == ['googlenet']
    with pytest.raises(ValueError, match='unknown family'):
        visionmix.list_models(family='mlpp')


def test_unknown_name_suggests_close_names():
    with pytest.raises(UnknownModelError, match='resnet50'):
        visionmix.create_model('resnet05')
    with pytest.raises(UnknownModelError, match='Did you mean'):
        visionmix.model_card('vit_smal_patch16_224')
    with pytest.raises(UnknownModelError) as info:
        visionmix.create_model('zzzzzz')
    assert 'Did you mean' not in str(info.value)  # nothing close: no random suggestions


def test_bad_kwargs_are_clear_errors():
    with pytest.raises(TypeError, match='resnet50.*bogus'):
        visionmix.create_model('resnet50', bogus=3)
    with pytest.raises(TypeError, match='googlenet.*bogus'):
        visionmix.create_model('googlenet', bogus=3)
    with pytest.raises(ValueError, match='num_classes'):
        visionmix.create_model('resnet50', num_classes=-1)
    with pytest.raises(ValueError, match='in_chans'):
        visionmix.create_model('resnet50', in_chans=2.5)


def test_passthrough_builds_with_its_own_library():
    model = visionmix.create_model('googlenet', num_classes=7).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    model = visionmix.create_model('mobilenetv2_100', num_classes=5).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_pretrained_offline_gives_a_clear_error():
    with pytest.raises(CheckpointError, match='pretrained_cfg_overlay'):
        visionmix.create_model('resnet50', pretrained=True)


def test_native_models_are_in_timm_and_never_shadow_timm_names():
    native = visionmix.list_models(source='visionmix')
    for name in native:
        assert timm.is_model(name)
    # A fresh interpreter without visionmix: none of our native names may exist in timm itself.
    code = 'import timm, json; print(json.dumps(timm.list_models()))'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert not set(native) & set(__import__('json').loads(out))


def test_registering_over_a_timm_name_is_refused():
    card = ModelCard(name='resnet18', family='conv', paper='x', arxiv=None, code_url=None, code_commit=None,
                     params=1, gmacs=None)

    def resnet18(**kwargs):
        raise AssertionError('never built')

    with pytest.raises(ValueError, match='already a timm model'):
        register_visionmix_model(card)(resnet18)
    assert timm.models.model_entrypoint('resnet18') is not resnet18


def test_card_rejects_unknown_family():
    with pytest.raises(ValueError, match='family'):
        ModelCard(name='x', family='mlps', paper='x', arxiv=None, code_url=None, code_commit=None, params=1,
                  gmacs=None)


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(CLASSIC), st.integers(min_value=0, max_value=3))
def test_one_typo_away_is_always_suggested(name, position):
    typo = name[:position] + name[position + 1:]  # drop one character
    if typo in visionmix.list_models():
        return
    with pytest.raises(UnknownModelError) as info:
        visionmix.model_card(typo)
    assert name in str(info.value)


@pytest.mark.parametrize('name', ['hire_mlp_tiny', 'swin_mlp_tiny_c24_patch4_window8_256',
                                  'spach_ms_xxs_patch4_224_conv'])
def test_native_pretrained_offline_gives_a_clear_error(name):
    with pytest.raises(CheckpointError, match='pretrained_cfg_overlay=dict.file='):
        visionmix.create_model(name, pretrained=True)


@pytest.mark.parametrize('name', ['hire_mlp_tiny', 'resnet50', 'googlenet'])
def test_wrong_input_channels_or_rank_is_one_clear_error(name):
    model = visionmix.create_model(name, num_classes=3).eval()
    with pytest.raises(ValueError, match=r'expected input of shape \(B, 3, H, W\), got \(1, 1, 64, 64\)'):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r'got \(3, 64, 64\)'):
        model(torch.randn(3, 64, 64))
    four = visionmix.create_model('hire_mlp_tiny', in_chans=4, num_classes=3).eval()
    with pytest.raises(ValueError, match='in_chans'):
        four(torch.randn(1, 3, 64, 64))
    assert four(torch.randn(1, 4, 64, 64)).shape == (1, 3)


# ----------------------------------------------------------------------------------- every timm and torchvision name

def test_any_timm_name_has_a_generic_card_and_builds():
    card = visionmix.model_card('convnext_atto')
    assert card.source == 'timm' and not card.curated and card.family == 'conv'
    assert card.params == sum(p.numel() for p in timm.create_model('convnext_atto').parameters())
    assert visionmix.model_card('vit_tiny_patch16_224').family == 'transformer'
    assert visionmix.model_card('resnet18').arxiv == '2110.00476'  # from timm's pretrained_cfg (paper_ids)
    model = visionmix.create_model('regnety_002', num_classes=4).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    assert 'convnext_atto' not in visionmix.list_models()  # the curated list stays curated
    everything = visionmix.list_models(include_all=True)
    assert {'convnext_atto', 'resnet18', 'tv:resnet18', 'tv:googlenet', 'hire_mlp_tiny'} <= set(everything)
    assert len(everything) > 1300
    assert visionmix.list_models('tv:res*', include_all=True, source='torchvision')[:2] == ['tv:resnet101',
                                                                                           'tv:resnet152']


def test_torchvision_names_through_the_tv_prefix():
    card = visionmix.model_card('tv:resnet18')
    assert card.source == 'torchvision' and card.params == 11_689_512 and card.family == 'conv'
    assert visionmix.model_card('tv:vit_b_16').family == 'transformer'
    model = visionmix.create_model('tv:mobilenet_v3_small', num_classes=3).eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    assert type(visionmix.create_model('tv:googlenet')).__name__ == type(visionmix.create_model('googlenet')).__name__
    with pytest.raises(UnknownModelError, match='tv:resnet18'):
        visionmix.create_model('tv:resnt18')
    with pytest.raises(TypeError, match='bogus'):
        visionmix.create_model('tv:resnet18', bogus=1)


def test_checkpoint_loading_is_strict_and_keeps_the_family_filter(tmp_path):
    from visionmix.checkpoint import save_checkpoint

    model = visionmix.create_model('resnet18', num_classes=3)
    save_checkpoint(model, tmp_path / 'w.safetensors')
    assert visionmix.registry.checkpoint_filter_for('hire_mlp_tiny') is not None
    assert visionmix.registry.checkpoint_filter_for('resnet18') is None
    visionmix.load_checkpoint(visionmix.create_model('resnet18', num_classes=3), tmp_path / 'w.safetensors')
    with pytest.raises(CheckpointError, match='shape mismatches'):
        visionmix.load_checkpoint(visionmix.create_model('resnet18', num_classes=5), tmp_path / 'w.safetensors')


def test_misspelt_per_run_spatial_option_is_refused():
    with pytest.raises(visionmix.VisionmixError, match=r"'window_mlp' takes no option\(s\) \['window_sise'\]"):
        visionmix.create_model('spach_ms', net_arch=[[('window_mlp', 1, {'window_sise': 4})]], img_size=32)
    model = visionmix.create_model('spach_ms', net_arch=[[('window_mlp', 1, {'window_size': 4})]], img_size=32)
    assert model.stages[0].blocks[0].token_mixer.window_size == (4, 4)
    # model-wide options are shared by every spatial function of a model, so those are filtered, not refused
    visionmix.create_model('spach_ms', net_arch=[['pass', 1], ['attn', 1]], spatial_kwargs={'window_size': 4})
