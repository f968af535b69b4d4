"""One slide-encoder factory (models/slide_encoders.py) behind the LP / tuned / fused rows and ModalTune.

The comparison rows (``gigapath_*``, ``titan_*``) and ModalTune's frozen backbone once built their
encoders separately and diverged (ModalTune TITAN accepted 1,536-d features at the paper profile,
TITAN LP refused them). These tests build every row of an encoder and its ModalTune model from the
same context and require the same encoder class and configuration, the same feature-width verdict
and the same loaded weights.
"""

from __future__ import annotations

import pytest
import torch

from bench.registry import all_models, get_model
from models.base import ModelContext
from models.gigapath import GigaPathSlideEncoder
from models.slide_encoders import (
    SLIDE_ENCODERS,
    build_slide_encoder,
    required_feature_dim,
    slide_encoder_config,
    slide_encoder_paper_context,
)
from models.titan import TitanSlideEncoder

MODALTUNE = {"gigapath": "modaltune", "titan": "modaltune_titan"}
ENCODER_CLASSES = (GigaPathSlideEncoder, TitanSlideEncoder)


def rows_of(encoder: str) -> list[str]:
    """Every registered model that holds slide encoder ``encoder``: its comparison rows and ModalTune."""
    rows = sorted(n for n, e in all_models().items() if e.family == "slide_encoders" and n.startswith(f"{encoder}_"))
    return [*rows, MODALTUNE[encoder]]


def context(profile: str, feature_dim: int, **extra) -> ModelContext:
    """A small cohort's context (12 genes in 3 pathways) at ``profile`` with ``feature_dim``-d tiles."""
    pathways = torch.zeros(12, 3, dtype=torch.bool)
    pathways[torch.arange(12), torch.arange(12) % 3] = True
    return ModelContext(n_outputs=4, feature_dim=feature_dim, n_genes=12, pathways=pathways, profile=profile,
                        extra=extra)


def the_encoder(model: torch.nn.Module) -> GigaPathSlideEncoder | TitanSlideEncoder:
    """The one slide encoder inside ``model`` (a row, a late fusion or ModalTune)."""
    found = [m for m in model.modules() if isinstance(m, ENCODER_CLASSES)]
    assert len(found) == 1, f"{type(model).__name__} holds {len(found)} slide encoders"
    return found[0]


def build_on_meta(name: str, ctx: ModelContext) -> torch.nn.Module:
    """Registry model ``name`` for ``ctx`` on the meta device (paper sizes cost no memory)."""
    with torch.device("meta"):
        return get_model(name).build(ctx)


def test_every_encoder_has_comparison_rows_and_modaltune():
    assert rows_of("gigapath") == ["gigapath_cat", "gigapath_cat_cls", "gigapath_cat_surv", "gigapath_kp",
                                   "gigapath_lp", "gigapath_tuned", "modaltune"]
    assert rows_of("titan") == ["titan_cat", "titan_cat_cls", "titan_cat_surv", "titan_kp", "titan_lp", "titan_tuned",
                                "modaltune_titan"]


@pytest.mark.parametrize("encoder", SLIDE_ENCODERS)
@pytest.mark.parametrize("profile, feature_dim", [("tiny", 32), ("small", 64), ("paper", 768)])
def test_rows_and_modaltune_get_the_same_encoder(encoder, profile, feature_dim):
    ctx = context(profile, feature_dim, patch_size_px=512)
    expected = slide_encoder_config(encoder, ctx)
    assert expected.feature_dim == feature_dim
    if encoder == "titan":
        assert expected.patch_size_lv0 == 512  # the cohort's tile size, not TITAN's default 1,024
    with torch.device("meta"):
        factory = build_slide_encoder(encoder, ctx)
    assert type(factory) is {"gigapath": GigaPathSlideEncoder, "titan": TitanSlideEncoder}[encoder]
    for name in rows_of(encoder):
        built = the_encoder(build_on_meta(name, ctx))
        assert type(built) is type(factory), name
        assert built.config == expected, name


@pytest.mark.parametrize("encoder", SLIDE_ENCODERS)
def test_paper_contexts_of_rows_and_modaltune_agree_on_the_encoder(encoder):
    paper = slide_encoder_paper_context(encoder)
    for name in rows_of(encoder):
        entry_context = get_model(name).paper_context
        assert entry_context["feature_dim"] == paper["feature_dim"], name
        assert entry_context.get("extra", {}) == paper.get("extra", {}), name
    assert slide_encoder_paper_context("titan") == {"feature_dim": 768, "extra": {"patch_size_px": 1024}}
    assert slide_encoder_paper_context("gigapath") == {"feature_dim": 1536}


@pytest.mark.parametrize("encoder, profile, feature_dim, refused", [
    ("titan", "paper", 1536, True),
    ("titan", "paper", 1024, True),
    ("titan", "paper", 768, False),
    ("titan", "tiny", 1536, False),
    ("titan", "small", 32, False),
    ("gigapath", "paper", 1024, False),
    ("gigapath", "paper", 1536, False),
    ("gigapath", "tiny", 768, False),
])
def test_one_feature_dim_rule_for_rows_and_modaltune(encoder, profile, feature_dim, refused):
    assert (required_feature_dim(encoder, profile) not in (None, feature_dim)) == refused
    ctx = context(profile, feature_dim)
    for name in rows_of(encoder):
        if refused:
            with pytest.raises(ValueError, match=rf"768-d CONCH v1\.5 tile features; this cohort's features are "
                                                 rf"{feature_dim}-d \(import a cohort of TITAN features"):
                build_on_meta(name, ctx)
        else:
            assert the_encoder(build_on_meta(name, ctx)).config.feature_dim == feature_dim, name


@pytest.mark.parametrize("encoder", SLIDE_ENCODERS)
def test_rows_and_modaltune_load_the_same_weights(encoder, tmp_path):
    torch.manual_seed(3)
    source = build_slide_encoder(encoder, context("tiny", 16))
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    ctx = context("tiny", 16, weights=str(path))
    for name in (f"{encoder}_lp", f"{encoder}_kp", MODALTUNE[encoder]):
        torch.manual_seed(4)  # a different random initialisation, which the weights must replace
        state = the_encoder(get_model(name).build(ctx)).state_dict()
        assert state.keys() == source.state_dict().keys(), name
        assert all(torch.equal(state[k], v) for k, v in source.state_dict().items()), name


def test_unknown_encoder_is_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown slide encoder 'uni'; expected one of gigapath, titan"):
        build_slide_encoder("uni", context("tiny", 16))
