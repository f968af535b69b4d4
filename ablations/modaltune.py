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

The parts each override switches are :class:`models.modaltune.ModalTuneConfig` fields. "No Text
Embedding" (Supplement Sec. 11.2: "we train the Modal Adapter in a single-task manner, without embedding
the tasks using text") also changes how it is trained: the ``supervised`` regime, one run per task (subtype,
survival), with a linear head on ModalTune's general-prompt embedding (its ``forward_features``) and
evaluated like the supervised rows; with one task prompt, no text is read and no projector is built.
"""

from __future__ import annotations

from models.registry import register_variant

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
