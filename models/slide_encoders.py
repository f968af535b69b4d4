"""The slide foundation models (Prov-GigaPath, TITAN) built for a :class:`ModelContext`, in one place.

Every model that contains a slide encoder gets it from :func:`build_slide_encoder`: the linear-probed,
tuned and late-fused comparison rows (:mod:`baselines.slide_encoders`) as well as ModalTune's frozen
backbone (:mod:`models.modaltune`), so a configuration, a weight-loading or a feature-width rule can
never differ between them.

- Configuration: the profile's (``paper`` = the published encoder; ``tiny`` / ``small`` = a
  shallow, narrow encoder of the same class, see ``GigaPathConfig`` / ``TitanConfig.for_profile``),
  reading ``ctx.feature_dim``-d tile features. TITAN's grid uses the cohort's tile size in level-0
  pixels (``ctx.extra["patch_size_px"]``; TITAN's own tiles: 512 px at 20x = 1,024).
- Feature width (:func:`required_feature_dim`): at the ``paper`` profile TITAN is bound to 768-d
  CONCH v1.5 tile features and refuses a cohort of any other width; Prov-GigaPath's published
  encoder takes its input width as an argument (``in_chans`` of its ``create_model``) and reads the
  cohort's features at every profile, as do the narrow encoders of both.
- Weights: ``ctx.extra["weights"]`` (the CLI's ``--weights``) is a local checkpoint, loaded strictly;
  without one the encoder is randomly initialised (nothing is downloaded).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from models.base import ModelContext
from models.gigapath import GigaPathConfig, GigaPathSlideEncoder, load_gigapath_weights
from models.titan import TitanConfig, TitanSlideEncoder, load_titan_weights

__all__ = [
    "SLIDE_ENCODERS",
    "SlideEncoder",
    "build_slide_encoder",
    "check_feature_dim",
    "required_feature_dim",
    "slide_encoder_config",
    "slide_encoder_paper_context",
]

SLIDE_ENCODERS = ("gigapath", "titan")

SlideEncoder = GigaPathSlideEncoder | TitanSlideEncoder

#: Tile-feature width the published TITAN vision tower reads (``mlp_patch_embed_dim``: CONCH v1.5).
TITAN_FEATURE_DIM = 768
#: Tile-feature width of Prov-GigaPath's own tile encoder (its paper configuration's input).
GIGAPATH_FEATURE_DIM = 1536
#: TITAN's tile size in level-0 pixels as ModalTune passes it (512 px tiles at 20x).
TITAN_PATCH_SIZE_PX = 1024


def _check_name(name: str) -> None:
    """Refuse an encoder name that is not one of :data:`SLIDE_ENCODERS`."""
    if name not in SLIDE_ENCODERS:
        raise ValueError(f"unknown slide encoder {name!r}; expected one of {', '.join(SLIDE_ENCODERS)}")


def slide_encoder_paper_context(name: str) -> dict[str, Any]:
    """The :class:`ModelContext` overrides of encoder ``name``'s paper configuration (a fresh dict):
    Prov-GigaPath reads 1,536-d tile features; TITAN 768-d CONCH v1.5 features on 1,024-px tiles."""
    _check_name(name)
    if name == "gigapath":
        return {"feature_dim": GIGAPATH_FEATURE_DIM}
    return {"feature_dim": TITAN_FEATURE_DIM, "extra": {"patch_size_px": TITAN_PATCH_SIZE_PX}}


def required_feature_dim(name: str, profile: str) -> int | None:
    """The tile-feature width encoder ``name`` must read at ``profile``, or ``None`` for the cohort's own.

    The one rule every caller shares: only the published TITAN (``paper``) is bound to a width, the
    768-d CONCH v1.5 features its patch embedding and its weights were made for.
    """
    _check_name(name)
    return TITAN_FEATURE_DIM if name == "titan" and profile == "paper" else None


def check_feature_dim(name: str, ctx: ModelContext) -> None:
    """Raise ``ValueError`` naming the expected width and the fix when ``ctx``'s features don't fit ``name``."""
    expected = required_feature_dim(name, ctx.profile)
    if expected is not None and ctx.feature_dim != expected:
        raise ValueError(
            f"TITAN at the {ctx.profile} profile reads {expected}-d CONCH v1.5 tile features; this cohort's "
            f"features are {ctx.feature_dim}-d (import a cohort of TITAN features, e.g. the release's *_titan "
            f"splits, or use --profile tiny / small, whose narrow TITAN reads any width)"
        )


def slide_encoder_config(name: str, ctx: ModelContext) -> GigaPathConfig | TitanConfig:
    """Encoder ``name``'s configuration for ``ctx`` (profile sizes, cohort feature width, TITAN's tile size),
    after :func:`check_feature_dim`."""
    check_feature_dim(name, ctx)
    if name == "gigapath":
        return GigaPathConfig.for_profile(ctx.profile, feature_dim=ctx.feature_dim)
    config = TitanConfig.for_profile(ctx.profile)
    return replace(config, feature_dim=ctx.feature_dim,
                   patch_size_lv0=int(ctx.extra.get("patch_size_px", config.patch_size_lv0)))


def build_slide_encoder(name: str, ctx: ModelContext) -> SlideEncoder:
    """Slide encoder ``name`` (``gigapath`` or ``titan``) for ``ctx``, with ``ctx.extra["weights"]`` loaded
    strictly when given (random initialisation otherwise)."""
    config = slide_encoder_config(name, ctx)
    weights = ctx.extra.get("weights")
    if name == "gigapath":
        encoder: SlideEncoder = GigaPathSlideEncoder(config)
        if weights:
            load_gigapath_weights(encoder, weights)
        return encoder
    encoder = TitanSlideEncoder(config)
    if weights:
        load_titan_weights(encoder, weights)
    return encoder
