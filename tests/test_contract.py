"""The timm model contract, checked for every model visionmix itself implements.

Each model runs at a small input (batch 1-2, 64x64 unless a model needs otherwise) so the whole suite stays fast.
A family that lands gets this suite for free: parametrisation comes from the registry.

Segmentation models (family 'segmentation', e.g. UNeXt) take the checks that apply to a dense predictor: forward
gives (B, K, H, W) logits with gradients everywhere, pretrained_cfg, features_only, forward_intermediates,
export / fx / compile, the checkpoint round trip and timm creation. Not applicable, and skipped with that reason:
forward_head / pre_logits and reset_classifier (no pooled classifier head: ``num_classes`` is the number of output
maps) and pool_size. Gradient checkpointing applies (UNeXt recomputes each encoder / decoder level).
tests/models/test_unext.py holds the segmentation-specific checks.
"""
from __future__ import annotations

import fnmatch

import pytest
import torch
import torch.nn as nn
from timm.models._features_fx import create_feature_extractor, get_graph_node_names

import visionmix
from visionmix.checkpoint import load_checkpoint, save_checkpoint

NATIVE = visionmix.list_models(source='visionmix')
NUM_CLASSES = 7
# Variants above this size run the default suite with two blocks per stage: the code paths are the ones of the
# full model (same widths, heads, windows, step schedules, spatial-function mix), building them is not.
# `-m slow` runs them in full.
SHRINK_ABOVE_PARAMS = 25_000_000


# Variants that differ from a default-run sibling only in widths and depths: `-m slow` runs them.
# (mobile_former_26m covers every Mobile-Former block type incl. grouped convs and channel shuffle; shrunk, Hire-MLP
# small and base are hire_mlp_tiny with one block fewer; the SPACH XS variants are XXS wider and deeper.)
SLOW_SIBLINGS = {f'mobile_former_{v}' for v in ('52m', '96m', '151m', '214m', '294m', '508m')} \
    | {'hire_mlp_small', 'hire_mlp_base'} \
    | {f'spach_{arch}_{kind}' for arch in ('ms_xs_patch4_224', 'xs_patch16_224') for kind in ('conv', 'attn', 'mlp')}


def _is_segmentation(name: str) -> bool:
    return visionmix.model_card(name).family == 'segmentation'


def _skip_for_segmentation(name: str, what: str) -> None:
    if _is_segmentation(name):
        pytest.skip(f'{what} does not apply to a segmentation model (see module docstring)')


def _is_token_mlp(name: str) -> bool:
    # SPACH token-MLP models are tied to the token count they were built for: build them for the suite's 64x64.
    return fnmatch.fnmatch(name, 'spach*_mlp')


def _shrunk_depths(name: str) -> tuple[int, ...]:
    single_stage = fnmatch.fnmatch(name, 'spach_*patch16*')
    return (2,) if single_stage else (2, 2, 2, 2)


CONTRACT_OVERRIDES: dict[str, tuple[dict, tuple[int, int]]] = {
    name: ({'img_size': 64}, (64, 64)) for name in NATIVE if _is_token_mlp(name)}


def _cases() -> list:
    cases = []
    for name in NATIVE:
        marks = [pytest.mark.slow] if name in SLOW_SIBLINGS else []
        if visionmix.model_card(name).params > SHRINK_ABOVE_PARAMS:
            cases.append(pytest.param((name, {'depths': _shrunk_depths(name)}), id=f'{name}-shrunk', marks=marks))
            cases.append(pytest.param((name, {}), id=name, marks=pytest.mark.slow))
        else:
            cases.append(pytest.param((name, {}), id=name, marks=marks))
    return cases


def test_native_models_exist():
    # Guards against a silently empty parametrisation (pytest would report the suite as passed).
    assert NATIVE, 'no native model registered: the contract suite would test nothing'
    assert SLOW_SIBLINGS <= set(NATIVE), f'not registered: {sorted(SLOW_SIBLINGS - set(NATIVE))}'


def _spec(name: str) -> tuple[dict, tuple[int, int]]:
    return CONTRACT_OVERRIDES.get(name, ({}, (64, 64)))


def _build(case: tuple[str, dict], seed: int = 0, **kwargs) -> nn.Module:
    name, case_kwargs = case
    torch.manual_seed(seed)
    return visionmix.create_model(name, **{'num_classes': NUM_CLASSES, **_spec(name)[0], **case_kwargs, **kwargs})


def _input(name: str, batch: int = 2) -> torch.Tensor:
    _, (h, w) = _spec(name)
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(1))


def _channels(model: nn.Module, features: torch.Tensor) -> int:
    return features.shape[-1] if getattr(model, 'output_fmt', 'NCHW') == 'NHWC' else features.shape[1]


@pytest.fixture(scope='module', params=_cases())
def built(request):
    """One model per case, shared by the read-only checks (building is the slow part).

    Yields ``(case, model)``; ``case = (name, kwargs)`` builds more of the same with :func:`_build`.
    """
    case = request.param
    return case, _build(case).eval()


def test_forward_backward(built):
    case, model = built
    name = case[0]
    model = _build(case).train()
    x = _input(name)
    out = model(x)
    expected = (2, NUM_CLASSES, *x.shape[2:]) if _is_segmentation(name) else (2, NUM_CLASSES)
    assert out.shape == expected
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None)]
    assert not no_grad, f'parameters without gradient: {no_grad[:5]}'
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@torch.no_grad()
def test_features_and_head(built):
    case, model = built
    name = case[0]
    _skip_for_segmentation(name, 'forward_head / pre_logits')
    x = _input(name)
    features = model.forward_features(x)
    assert _channels(model, features) == model.num_features
    pre_logits = model.forward_head(features, pre_logits=True)
    assert pre_logits.shape == (2, model.head_hidden_size)
    logits = model.forward_head(features)
    assert torch.allclose(logits, model(x), atol=1e-5)


@torch.no_grad()
def test_reset_classifier_and_num_classes_zero(built):
    case, _ = built
    name = case[0]
    _skip_for_segmentation(name, 'reset_classifier')
    x = _input(name)
    model = _build(case).eval()
    model.reset_classifier(0)
    # timm's convention: only the final classifier goes, so forward gives what forward_head(pre_logits=True) gives
    pooled = model(x)
    assert pooled.shape == (2, model.head_hidden_size)
    assert torch.allclose(pooled, model.forward_head(model.forward_features(x), pre_logits=True), atol=1e-6)
    assert _build(case, num_classes=0).eval()(x).shape == (2, model.head_hidden_size)
    model.reset_classifier(0, '')
    unpooled = model(x)
    assert unpooled.ndim == 4 and _channels(model, unpooled) == model.num_features
    model.reset_classifier(11, 'avg')
    assert model(x).shape == (2, 11)

    headless = _build(case, num_classes=0, global_pool='').eval()
    reference = _build(case).eval()
    reference.reset_classifier(0, '')
    headless.load_state_dict(reference.state_dict())
    assert torch.equal(headless(x), reference(x))


@torch.no_grad()
def test_prune_intermediate_layers(built):
    """timm's pruning contract: the kept maps are unchanged, forward_features ends at the last kept map without the
    final norm when asked (or when later blocks went), and num_features says its width."""
    case, _ = built
    name = case[0]
    x = _input(name)
    full = _build(case).eval().forward_intermediates(x, intermediates_only=True)
    take = len(full) - 2  # an earlier map: the blocks after it are dropped
    model = _build(case).eval()
    assert model.prune_intermediate_layers(indices=[take], prune_norm=True) == [take]
    assert torch.allclose(model.forward_intermediates(x, indices=[take], intermediates_only=True)[0], full[take],
                          atol=1e-5)
    features = model.forward_features(x)
    if getattr(model, 'output_fmt', 'NCHW') == 'NHWC':
        features = features.permute(0, 3, 1, 2)
    assert features.shape == full[take].shape and model.num_features == full[take].shape[1]
    assert torch.allclose(features, full[take], atol=1e-5)
    whole = _build(case).eval()  # all blocks kept: prune_norm drops only the end of the trunk
    whole.prune_intermediate_layers(indices=1, prune_norm=True, prune_head=False)
    last = whole.forward_features(x)
    if getattr(whole, 'output_fmt', 'NCHW') == 'NHWC':
        last = last.permute(0, 3, 1, 2)
    assert torch.allclose(last, full[-1], atol=1e-5) and whole.num_features == full[-1].shape[1]


def test_pretrained_cfg(built):
    case, model = built
    name = case[0]
    cfg = model.pretrained_cfg
    card = visionmix.model_card(name)
    state = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in state
    classifiers = cfg['classifier'] if isinstance(cfg['classifier'], (tuple, list)) else [cfg['classifier']]
    assert all(f'{c}.weight' in state for c in classifiers)
    assert tuple(cfg['input_size']) == card.input_size
    assert tuple(cfg['mean']) == card.mean and tuple(cfg['std']) == card.std
    assert 0 < cfg['crop_pct'] <= 1 and cfg['interpolation'] in ('bicubic', 'bilinear')
    if not _is_segmentation(name):
        reduction = model.feature_info[-1]['reduction']
        _, h, w = card.input_size
        assert tuple(cfg['pool_size']) == (h // reduction, w // reduction)
    assert cfg['fixed_input_size'] is False or cfg['fixed_input_size'] is True
    assert cfg['architecture'] == name


@torch.no_grad()
def test_features_only(built):
    case, model = built
    name = case[0]
    x = _input(name, batch=1)
    extractor = _build(case, features_only=True).eval()
    maps = extractor(x)
    assert len(maps) == len(model.feature_info)
    assert extractor.feature_info.channels() == [f['num_chs'] for f in model.feature_info]
    for fmap, channels, reduction in zip(maps, extractor.feature_info.channels(), extractor.feature_info.reduction()):
        assert fmap.ndim == 4 and fmap.shape[1] == channels, 'features_only must give NCHW maps'
        assert fmap.shape[2] == x.shape[2] // reduction and fmap.shape[3] == x.shape[3] // reduction
    if len(model.feature_info) > 1:
        out_indices = (0, len(model.feature_info) - 1)
        partial = _build(case, features_only=True, out_indices=out_indices).eval()
        first_last = partial(x)
        assert len(first_last) == 2
        assert torch.equal(first_last[0], maps[0]) and torch.equal(first_last[1], maps[-1])


@torch.no_grad()
def test_forward_intermediates(built):
    case, model = built
    name = case[0]
    x = _input(name, batch=1)
    final, intermediates = model.forward_intermediates(x)
    assert torch.allclose(final, model.forward_features(x), atol=1e-6)
    assert len(intermediates) == len(model.feature_info)
    for fmap, info in zip(intermediates, model.feature_info):
        assert fmap.shape[1] == info['num_chs']
    last_two = model.forward_intermediates(x, indices=[-2, -1], intermediates_only=True)
    assert len(last_two) == 2 and torch.equal(last_two[-1], intermediates[-1])
    first = model.forward_intermediates(x, indices=[0], intermediates_only=True)
    assert torch.equal(first[0], intermediates[0])
    n_last = model.forward_intermediates(x, indices=1, intermediates_only=True)
    assert len(n_last) == 1 and torch.equal(n_last[0], intermediates[-1])


def test_grad_checkpointing_does_not_change_outputs(built):
    case, _ = built
    name = case[0]
    x = _input(name)
    plain = _build(case).train()
    checkpointed = _build(case).train()
    checkpointed.set_grad_checkpointing(True)
    out_plain, out_ckpt = plain(x), checkpointed(x)
    assert torch.allclose(out_plain, out_ckpt, atol=1e-6)
    out_plain.sum().backward()
    out_ckpt.sum().backward()
    for (n, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), n


@torch.no_grad()
def test_torch_export_and_fx(built):
    case, model = built
    name = case[0]
    x = _input(name, batch=1)
    expected = model(x)
    exported = torch.export.export(model, (x,))
    assert torch.allclose(exported.module()(x), expected, atol=1e-5)
    _, eval_nodes = get_graph_node_names(model)
    fx_model = create_feature_extractor(model, return_nodes=[eval_nodes[-1]])
    assert torch.allclose(fx_model(x)[eval_nodes[-1]], expected, atol=1e-5)


@torch.no_grad()
def test_torch_compile_eager_backend(built):
    case, model = built
    name = case[0]
    x = _input(name, batch=1)
    compiled = torch.compile(model, backend='eager', fullgraph=False)
    assert torch.allclose(compiled(x), model(x), atol=1e-5)


@torch.no_grad()
def test_checkpoint_round_trip(built, tmp_path):
    case, model = built
    name = case[0]
    path = save_checkpoint(model, tmp_path / f'{name}.safetensors')
    fresh = _build(case, seed=123).eval()
    x = _input(name)
    assert not torch.equal(fresh(x), model(x))
    load_checkpoint(fresh, path)
    assert torch.equal(fresh(x), model(x))
    again = _build(case, seed=321, checkpoint_path=str(path)).eval()
    assert torch.equal(again(x), model(x))


def test_timm_create_model_builds_it(built):
    import timm

    case, model = built
    name = case[0]
    other = timm.create_model(name, num_classes=NUM_CLASSES, **_spec(name)[0], **case[1])
    assert type(other) is type(model)
