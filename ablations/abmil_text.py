"""ABMIL (cat) w/ text emb. (Table 8, Supplement Sec. 11.2): ABMIL (cat) trained with ModalTune's
text-distillation loss on its patient embedding, then linear-probed like ModalTune.

The paper trains ABMIL (cat) "with text embeddings" for multi-task learning and compares it with ABMIL
(cat) trained on single tasks (its text: 1.6 % lower subtype balanced accuracy, survival similar). Its
release has no code for this row; what is fixed here:

- **Training and evaluation:** the ``text_distill`` regime unchanged (:mod:`bench.train.distill`): the
  release's KL loss between each task embedding and the frozen random projection of that task's text
  embedding (rows general, diagnosis, survival of the cohort's text cache), best epoch by a validation
  subtype probe, then logistic-regression / Cox probes of the general-task embedding.
- **Three task prompts on one embedding (a choice, not the paper's statement):** ABMIL (cat) has no
  prompt input, so it cannot condition its attention on the task as ModalTune does. Its fused
  patient embedding ``h`` (``[B, F]``, F = the fusion width: 256 in the paper) feeds one linear head
  per task, ``z_t = W_t h + b_t`` (``[B, 256]``, ModalTune's output width); each head is distilled
  towards its own task's text, so all three train the shared ABMIL, Gene Mixer and fusion layers.
  The probed embedding is the general head's ``z_general``, as ModalTune probes its general-task
  embedding. The heads start at PyTorch's default ``nn.Linear`` initialisation.

:class:`TaskEmbeddings` is that adapter for any model with one patient embedding (``forward_features``
and ``embed_dim``); it gives the regime ModalTune's distillation contract (``forward_tasks``,
``text_rows``, ``general_index``, ``config.projector``, ``config.text_encoder``). Parameters at the paper
configuration: ABMIL (cat)'s, its task head replaced by the adapter's (same size), plus ``T x (F x 256
+ 256)`` for the ``T`` task heads (3 x 65,792 = 197,376).

The base model is looked up in the registry (``abmil_cat``, registered by the baselines, which the
registry imports before the ablations), so this module imports only ``models``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from models.base import BenchModel, ModelContext
from models.modaltune import modaltune_gene_pathways
from models.modaltune.model import MODALTUNE_TASKS
from models.modaltune.projection import DEFAULT_TEXT_ENCODER, check_text_encoder
from models.paper.omics import PAPER_N_GENES
from models.registry import register_model, registered
from models.text.prompts import TEXT_TASKS

__all__ = ["TaskEmbeddings", "TaskEmbeddingsConfig", "abmil_cat_text"]

#: Projectors that map the text to the adapter's output width (the widths of ``h`` and the text stay free).
_PROJECTORS = ("frozen", "trainable")


@dataclass(frozen=True)
class TaskEmbeddingsConfig:
    """The adapter's settings (defaults: ModalTune's release). ``tasks``: one head per name of
    :data:`~models.text.prompts.TEXT_TASKS` (``general`` required: its head is the patient embedding);
    ``output_dim``: the task embeddings' width; ``projector``: ``frozen`` (the release's fixed random
    projector) or ``trainable``; ``text_encoder``: the cohort's cached text embeddings distilled
    (``text/<name>.pt``)."""

    tasks: tuple[str, ...] = MODALTUNE_TASKS
    output_dim: int = 256
    projector: str = "frozen"
    text_encoder: str = DEFAULT_TEXT_ENCODER

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(self.tasks))  # JSON lists arrive from overrides
        unknown = [t for t in self.tasks if t not in TEXT_TASKS]
        if unknown or len(set(self.tasks)) != len(self.tasks) or "general" not in self.tasks:
            raise ValueError(f"tasks must be distinct names from {TEXT_TASKS} including 'general', got {self.tasks}")
        if self.output_dim < 1:
            raise ValueError(f"output_dim must be positive, got {self.output_dim}")
        if self.projector not in _PROJECTORS:
            raise ValueError(f"projector must be one of {_PROJECTORS} for a model without a task-conditioned "
                             f"encoder, got {self.projector!r}")
        check_text_encoder(self.text_encoder)

    @classmethod
    def resolve(cls, overrides: Mapping[str, object]) -> TaskEmbeddingsConfig:
        """The defaults with ``overrides`` applied; an unknown name is a ValueError listing the valid ones."""
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise ValueError(f"no setting(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
        return cls(**overrides)


class TaskEmbeddings(BenchModel):
    """One linear head per task on a model's single patient embedding (module docstring).

    ``forward_tasks(batch, tasks=None) -> [B, n, output_dim]`` (all configured tasks, or the given
    task indexes, in order); ``forward_features(batch) -> [B, output_dim]``: the general task's
    embedding; ``head``: ``Linear(output_dim, n_outputs)`` for the supervised contract. The base
    model's own task head is replaced by ``nn.Identity`` (never used here). Reads what the base reads.
    """

    def __init__(self, base: BenchModel, config: TaskEmbeddingsConfig, n_outputs: int) -> None:
        super().__init__()
        base.head = nn.Identity()
        self.base = base
        self.modalities = base.modalities
        self.config = config
        self.task_names = config.tasks
        self.n_tasks = len(config.tasks)
        self.general_index = config.tasks.index("general")
        self.task_heads = nn.ModuleList(nn.Linear(int(base.embed_dim), config.output_dim) for _ in config.tasks)
        self.embed_dim = config.output_dim
        self.head = nn.Linear(self.embed_dim, n_outputs)

    @property
    def text_rows(self) -> tuple[int, ...]:
        """Rows of ``batch["text"] [B, 4, E]`` matching :attr:`task_names` (release: ``(0, 1, 3)``)."""
        return tuple(TEXT_TASKS.index(name) for name in self.task_names)

    def forward_tasks(self, batch: dict[str, torch.Tensor], tasks: Sequence[int] | None = None) -> torch.Tensor:
        """Per-task embeddings ``[B, n, output_dim]`` for the task indexes ``tasks`` (default: all)."""
        ids = list(range(self.n_tasks)) if tasks is None else [int(t) for t in tasks]
        if not ids or min(ids) < 0 or max(ids) >= self.n_tasks:
            raise ValueError(f"task indexes must lie in [0, {self.n_tasks}) ({self.task_names}), got {ids}")
        h = self.base.forward_features(batch)
        return torch.stack([self.task_heads[i](h) for i in ids], dim=1)

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The general task's embedding ``[B, output_dim]`` (what the linear probes read)."""
        return self.forward_tasks(batch, (self.general_index,))[:, 0]


#: ABMIL (cat)'s paper context: 1,536-d Prov-GigaPath tile features, ModalTune's 4,987 genes / 331 pathways.
_PAPER_CONTEXT = {"feature_dim": 1536, "n_genes": PAPER_N_GENES, "pathways": modaltune_gene_pathways}


def _config(ctx: ModelContext, **overrides: object) -> dict[str, object]:
    """The adapter's resolved configuration (enters the run id)."""
    return asdict(TaskEmbeddingsConfig.resolve(overrides))


@register_model("abmil_cat_text", label="ABMIL (cat) w/ text emb.", modalities=("wsi", "rna"), tasks=("multitask",),
                regime="text_distill", paper_context=_PAPER_CONTEXT, config=_config)
def abmil_cat_text(ctx: ModelContext, **overrides: object) -> TaskEmbeddings:
    """ABMIL (cat) w/ text emb.: ABMIL (cat) with one linear head per task prompt, distilled towards text.

    ``overrides``: :class:`TaskEmbeddingsConfig` fields. The base is the registered ``abmil_cat`` at
    ``ctx`` (its profile's widths: fusion 256 / 64 / 32 for ``paper`` / ``small`` / ``tiny``).
    """
    config = TaskEmbeddingsConfig.resolve(overrides)
    base = registered().get("abmil_cat")
    if base is None:
        raise ValueError("abmil_cat_text wraps the registered abmil_cat: import bench.registry (which registers "
                         "the baselines) before building it")
    return TaskEmbeddings(base.build(ctx), config, ctx.n_outputs)
