"""Table 7 (Supplement Sec. 10, text embedding analysis): linear probes on the text embeddings themselves.

The paper probes the *general* task's text embedding of each patient (the prompt with the cancer site,
subtype, TNM stage and survival status; row 0 of the cohort's text cache ``[4, E]``), as it is and
after ModalTune's frozen random Projector, with the harness's probes (logistic regression for subtype,
Cox PH for survival) on the same splits. It shows the text carries each task's signal and that the
random projection keeps it. Two "models" of the ``linear_probe`` regime read ``batch["text"]``:

| name | label (paper) | embedding probed |
|---|---|---|
| ``text_probe`` | Text Embedding | the general text embedding (width of the text encoder) |
| ``text_probe_projected`` | Text Embedding after random projection | it through :class:`TextProjector` |

The projector is ModalTune's (512 -> 256 in the paper, the model's output width of the profile
elsewhere), drawn from the run seed as a ModalTune run draws it. The text embeddings are those a
ModalTune run distils by default (:data:`models.modaltune.projection.DEFAULT_TEXT_ENCODER`).

The paper's Table 7 has four task rows for each of the two columns; the subtype run gives "Cancer
Subtyping" and the survival run the other three (:mod:`bench.regimes.linear_probe`): "Survival
prediction" (Cox PH), "Duration Bins" (logistic regression of the survival bin on the same embedding,
balanced accuracy) and "Survival prediction w/o stage" (Cox PH on the embedding of the general text
written without its staging sentences, as the release writes it for a patient of unknown stage).
Each of the table's sections is one of these (:data:`reports.tables.SECTIONS`).
"""

from __future__ import annotations

import torch
from torch import nn

from models.base import BenchModel, ModelContext
from models.modaltune.model import ModalTuneConfig
from models.registry import register_model
from models.text.projector import TextProjector

#: The row of a patient's cached text embeddings ``[4, E]`` that Table 7 probes (the general prompt).
GENERAL_TEXT_ROW = 0


class TextEmbeddingProbe(BenchModel):
    """A patient's general text embedding ``[B, E]``, optionally through a frozen projector; nothing is
    trained (the ``linear_probe`` regime fits its probes on these embeddings)."""

    modalities = ("text",)

    def __init__(self, text_dim: int, n_outputs: int, projector: nn.Module | None = None):
        super().__init__()
        self.projector = projector
        self.embed_dim = int(projector.out_dim) if projector is not None else text_dim
        self.head = nn.Linear(self.embed_dim, n_outputs)
        self.requires_grad_(False)

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        text = batch["text"][:, GENERAL_TEXT_ROW]
        return text if self.projector is None else self.projector(text)


#: What a text probe's runs measure (enters the run id): the general text row, and in the survival run
#: Table 7's three survival-side rows.
PROBE_ROWS = {"text_row": "general", "survival_rows": ["c_index", "bins_balanced_accuracy", "nostage_c_index"]}


def _probe_config(ctx: ModelContext) -> dict[str, object]:
    """The text probes' configuration (:data:`PROBE_ROWS`)."""
    return dict(PROBE_ROWS)


def projected_width(ctx: ModelContext) -> int:
    """The frozen projector's output width: ModalTune's output width at the profile (256 in the paper)."""
    return int(ModalTuneConfig.for_encoder("gigapath", ctx.profile, ctx.text_dim).output_dim)


@register_model("text_probe", label="Text Embedding", modalities=("text",), regime="linear_probe",
                config=_probe_config)
def text_probe(ctx: ModelContext) -> TextEmbeddingProbe:
    """Table 7, "Text Embedding": the general text embedding, linear-probed (no parameters trained)."""
    return TextEmbeddingProbe(ctx.text_dim, ctx.n_outputs)


@register_model("text_probe_projected", label="Text Embedding after random projection", modalities=("text",),
                regime="linear_probe", config=_probe_config)
def text_probe_projected(ctx: ModelContext) -> TextEmbeddingProbe:
    """Table 7, "Text Embedding after random projection": the general text embedding through ModalTune's
    frozen random Projector (seeded from the global RNG, which the regime seeds with the run seed)."""
    seed = int(torch.randint(0, 2**31 - 1, (), device="cpu").item())
    projector = TextProjector(in_dim=ctx.text_dim, out_dim=projected_width(ctx), seed=seed)
    return TextEmbeddingProbe(ctx.text_dim, ctx.n_outputs, projector)
