"""ModalTune's ablations (the paper's Table 8 and Supplement Sec. 11): each a registered variant of
``modaltune`` with the overrides that make it, never a copy of the model.

| variant | label (paper) | overrides |
|---|---|---|
| ``modaltune_single_modal`` | Single Modal | transcriptomics tokens replaced by as many learned embeddings |
| ``modaltune_no_text`` | No Text Embedding | supervised, one run per task: head on the general embedding, no text |
| ``modaltune_single_task`` | Single Task Prompt | only the general prompt and its text embedding |
| ``modaltune_lora`` | ModalTune w/ LoRA | LoRA on the frozen encoder instead of the Modal Adapters |
| ``modaltune_no_projector`` | No Projector | output width = text width, text used unprojected |
| ``modaltune_trainable_projector`` | Trainable Projector | the text projector trained with the model |
| ``modaltune_model_side_projector`` | Model-side Projector | a trained projection at the end of the model |
| ``modaltune_medllama`` | ModalTune w/ MedLlama v3.1 | distils a local causal LM's text embeddings (``hf-<dir>``) |

The parts each override switches are :class:`models.modaltune.ModalTuneConfig` fields. "No Text
Embedding" (Supplement Sec. 11.2: "we train the Modal Adapter in a single-task manner, without embedding
the tasks using text") also changes how it is trained: the ``supervised`` regime, one run per task (subtype,
survival), with a linear head on ModalTune's general-prompt embedding (its ``forward_features``) and
evaluated like the supervised rows; with one task prompt, no text is read and no projector is built.

"ModalTune w/ MedLlama v3.1" (Supplement Sec. 11.4) distils the text embeddings of Llama-3-8B-UltraMedical
(Hugging Face ``TsinghuaC3I/Llama-3-8B-UltraMedical``, the model the paper's text names; its table's "v3.1"
may point at ``TsinghuaC3I/Llama-3.1-8B-UltraMedical``, which loads the same way) instead of CONCH's: the
last hidden state mean-pooled over the prompt's tokens (4,096-d, :mod:`models.text.hf`), through the same
frozen random Projector to 256-d. Nothing is downloaded: the model is a local directory, read as the
``hf:DIR`` text encoder, and its cache name ``hf-<directory name>`` is the variant's ``text_encoder``
(it enters the run id). Without one the variant refuses to resolve rather than distil other text: give
it with ``run --text-encoder hf:DIR``, or to a grid with the environment variable :data:`MEDLLAMA_ENV`.
"""

from __future__ import annotations

from dataclasses import asdict

from models.base import ModelContext
from models.modaltune import resolve_config
from models.registry import register_variant

#: The environment variable naming the local MedLlama directory a grid's MedLlama row distils.
MEDLLAMA_ENV = "MEDLLAMA_DIR"
#: The Hugging Face model the paper's MedLlama ablation uses (downloaded by the user, never by the bench).
MEDLLAMA_MODEL_ID = "TsinghuaC3I/Llama-3-8B-UltraMedical"

ABLATIONS = (
    ("modaltune_single_modal", "Single Modal", {"gene_tokens": "learned"},
     "ModalTune whose transcriptomics tokens are replaced by the same number of learned embeddings"),
    ("modaltune_single_task", "Single Task Prompt", {"tasks": ("general",)},
     "ModalTune with only the general task prompt and its text embedding"),
    ("modaltune_lora", "ModalTune w/ LoRA", {"adapter": "lora"},
     "ModalTune with modality-specific LoRA on the frozen encoder's q/k/v instead of the Modal Adapters"),
    ("modaltune_no_projector", "No Projector", {"projector": "none"},
     "ModalTune distilling the unprojected text embeddings (output width = text width)"),
    ("modaltune_trainable_projector", "Trainable Projector", {"projector": "trainable"},
     "ModalTune with the text projector trained with the model"),
    ("modaltune_model_side_projector", "Model-side Projector", {"projector": "model_side"},
     "ModalTune with a trained projection at the end of the model and unprojected text"),
)

for _name, _label, _overrides, _description in ABLATIONS:
    register_variant(_name, "modaltune", label=_label, overrides=_overrides, description=_description)

register_variant("modaltune_no_text", "modaltune", label="No Text Embedding", overrides={"tasks": ("general",)},
                 description="the Modal Adapter model trained on one task at a time with a supervised head, no text",
                 regime="supervised", tasks=("subtype", "survival"))


def _medllama_config(ctx: ModelContext, **overrides: object) -> dict[str, object]:
    """ModalTune's resolved configuration, refused unless its ``text_encoder`` is a local ``hf:DIR`` model's
    cache (``hf-<directory name>``): the row must never distil other text under the MedLlama label."""
    encoder = str(overrides.get("text_encoder", ""))
    if not encoder.startswith("hf-"):
        raise ValueError(f"ModalTune w/ MedLlama v3.1 distils a local causal LM's text embeddings and needs a local "
                         f"MedLlama directory ({MEDLLAMA_MODEL_ID}): pass --text-encoder hf:DIR to run, or set "
                         f"{MEDLLAMA_ENV}=DIR for a grid (got text_encoder {encoder or 'unset'!r})")
    return asdict(resolve_config(ctx, "gigapath", overrides))


register_variant("modaltune_medllama", "modaltune", label="ModalTune w/ MedLlama v3.1", overrides={},
                 description="ModalTune distilling mean-pooled Llama-3-8B-UltraMedical text embeddings (a local "
                             "hf:DIR model) through the frozen random Projector",
                 config=_medllama_config)
