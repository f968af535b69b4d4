"""ModalTune's text side: prompt construction, text encoders and the frozen random Projector.

:mod:`models.text.prompts` writes a patient's clinical record as the paper's four texts (general,
diagnosis, stage, survival); :func:`build_text_encoder` (:mod:`models.text.factory`) picks the
encoder that embeds them behind the :class:`TextEncoder` interface (:mod:`models.text.base`):
``bow`` (:mod:`models.text.bow`), ``conch`` (:mod:`models.text.conch`, tokenised by
:mod:`models.text.tokenizer`) or ``hf:DIR`` (:mod:`models.text.hf`); :mod:`models.text.projector`
maps the embeddings to the model's output space.
"""

from models.text.base import TextEncoder
from models.text.bow import BowEncoder
from models.text.conch import ConchEncoder, ConchTextConfig, ConchTextTower, load_conch_text_tower
from models.text.factory import ENCODER_SPECS, build_text_encoder
from models.text.hf import HFEncoder, mean_pool
from models.text.projector import TextProjector
from models.text.prompts import TEXT_TASKS, PromptError, build_prompts, survival_bin_phrases
from models.text.tokenizer import ByteLevelBPETokenizer

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
    "mean_pool",
    "survival_bin_phrases",
]
