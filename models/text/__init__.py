"""ModalTune's text side: prompt construction, text encoders and the frozen random Projector.

:mod:`models.text.prompts` writes a patient's clinical record as the paper's four texts (general,
diagnosis, stage, survival); :mod:`models.text.encoders` embeds them (``bow``, ``conch``,
``hf:DIR``); :mod:`models.text.projector` maps the embeddings to the model's output space.
"""

from models.text.encoders import (
    ENCODER_SPECS,
    BowEncoder,
    ByteLevelBPETokenizer,
    ConchEncoder,
    ConchTextConfig,
    ConchTextTower,
    HFEncoder,
    TextEncoder,
    build_text_encoder,
    load_conch_text_tower,
)
from models.text.projector import TextProjector
from models.text.prompts import TEXT_TASKS, PromptError, build_prompts, survival_bin_phrases

__all__ = [
    "ENCODER_SPECS",
    "TEXT_TASKS",
    "BowEncoder",
    "ByteLevelBPETokenizer",
    "ConchEncoder",
    "ConchTextConfig",
    "ConchTextTower",
    "HFEncoder",
    "PromptError",
    "TextEncoder",
    "TextProjector",
    "build_prompts",
    "build_text_encoder",
    "load_conch_text_tower",
    "survival_bin_phrases",
]
