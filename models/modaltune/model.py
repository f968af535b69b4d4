"""ModalTune: a frozen slide encoder with Modal Adapters, a Gene Mixer and learnable task prompts.

Reference: ModalTune (ICCV 2025) Sec. 3 and Supplement Table 6; the release, martellab-sri/ModalTune
``models/aggregators/longvit_adapter.py`` (``LongNetGeneAdapter``, Prov-GigaPath) and
``titan_adapter.py`` (``TITANGeneAdapter``, Table 9), configured by
``model_configs/modaltune_{gigapath,titan}_config.json`` and driven by ``train_modaltune.py``.

Data flow for one patient and one task ``t`` (``D`` = encoder width, 768 in both papers' encoders)::

    rna [G] -> Gene Mixer (models.genemixer, output width D)       pathway tokens g [64, D]
    task prompt p_t = LN(W e_t + b)   (Linear(n_tasks, D) on a one-hot, the release's task_weight)
    adapter tokens c = [p_t; g] + (positions pos [65, D] inside every attention)   [65, D]
    tokens = encoder.embed(features, coords, mask)                             [1 + N, D]
    for each interaction block i (layer groups (0-3), (4-7), (8-11) for GigaPath):
        c = PromptSelfAttention_i(c, pos)          (blocks 1, 2; the release's prompt SA)
        patches = Injector_i(patches, c, pos)       (gamma starts at 0: identity)
        tokens = encoder layers of group i ([CLS; patches])
        c = Extractor_i(c, patches, pos)            (+ 2 extra extractors in the last block)
    image = GigaPath: raw CLS token | TITAN: attention-pooled norm(tokens)        [D]
    fused = image + c[0] + mean(c[1:])    ("sum", GigaPath)
          | [image; c[0]; mean(c[1:])]     ("cat", TITAN)                       [D] or [3D]
    embedding_t = final_project(final_norm(fused))                             [256]

The release runs one full forward per task (``multitask_forward`` with ``task_ids=[0, 1, 2]``);
here the tasks are folded into the batch (each bag repeated per task) and run in one pass, with
the same results up to floating-point summation order. The release trains three tasks, ``general``,
``diagnosis`` and ``survival`` (``TASK_IDS`` in ``utils/constants.py``), distilled towards the text
rows ``[0, 1, 3]`` of the 4-row text embedding (general, diagnosis, stage, survival; the stage text
is not used), and probes the ``general`` embedding (``evaluate`` keeps ``logit[[0]]``).
:attr:`ModalTune.text_rows` gives those rows for the configured tasks.

Parameters at the paper configuration (Prov-GigaPath, 331 pathways over 4,987 genes, measured on
the release): Gene Mixer 25,102,170; interaction blocks 6,836,160; prompt self-attention
1,333,632; gene positions 49,920; task prompts 4,608; final norm + projection 198,400 -> 33,524,890
trainable, plus the frozen encoder's 86,330,880. TITAN: final layers 594,688 ("cat" of three
768-d features) -> 33,921,178 trainable, frozen 48,539,904. The benchmark contract adds a linear
``head`` (``Linear(256, n_outputs)``, 1,028 parameters for 4 outputs) that the release has not.

Parts (:class:`ModalTuneConfig`; Table 8's ablations switch them), trainable counts at the paper
configuration with the head: ``adapter="lora"`` replaces interaction blocks, prompt
self-attention and gene positions by 12 x 92,160 LoRA parameters -> 26,412,126;
``gene_tokens="learned"`` replaces the Gene Mixer by 64 x 768 tokens -> 8,472,900;
``projector="model_side"`` adds ``Linear(256, 512)`` (and a 512-wide head) -> 33,658,526;
``projector="none"`` widens ``final_project`` to the 512-d text -> 33,723,806; ``frozen`` and
``trainable`` projectors are no model parameters (33,525,918, as the release).

``clinical=True`` ("ModalTune w/ Clinical", Table 10) adds one clinical token, the release's 2-layer
clinical MLP over the encoded clinical vector (:mod:`models.modaltune.clinical`, :mod:`models.clinical`),
to the adapter tokens (after the task prompt, before the pathway tokens; the release puts it first,
which only permutes the learned positions) and its own term to the fusion (summed, or concatenated
after the pathway mean); at the paper configuration it adds 314,496 + 768 (one more adapter-token
position) -> 33,841,182 trainable with the head (TITAN's "cat" fusion also widens the final layers).

Deviation (documented): the frozen encoder always runs in eval mode (no embedding / FFN dropout,
no stochastic depth inside it), while the release's ``model.train()`` also switches the frozen
encoder's dropout on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.base import BenchModel, bag_mask, count_parameters
from models.genemixer import MixerBlock, PathwaySNN
from models.modaltune.adapter import (
    InteractionBlock,
    PromptSelfAttention,
    interaction_groups,
    validate_interaction_groups,
)
from models.modaltune.backbones import EncodedBag, SlideBackbone
from models.modaltune.clinical import ClinicalTokens
from models.modaltune.gene_tokens import LearnedGeneTokens
from models.modaltune.lora import LayerLoRA, LowRank
from models.modaltune.projection import DEFAULT_TEXT_ENCODER, PROJECTORS, check_text_encoder
from models.text.prompts import TEXT_TASKS

__all__ = ["ADAPTERS", "GENE_TOKENS", "MODALTUNE_TASKS", "PAPER_CONFIGS", "ModalTune", "ModalTuneConfig"]

#: The release's tasks, in its order (task ids 0, 1, 2).
MODALTUNE_TASKS = ("general", "diagnosis", "survival")
#: ``ModalTuneConfig.adapter``: the release's Modal Adapter, or LoRA on the frozen encoder (Table 8).
ADAPTERS = ("modal_adapter", "lora")
#: ``ModalTuneConfig.gene_tokens``: the Gene Mixer's transcriptomics tokens, or learned ones ("Single Modal").
GENE_TOKENS = ("transcriptomics", "learned")

#: Adapter heads per profile: 12 in the paper (head width 16 in the 192-d compressed space);
#: the narrow profiles keep a comparable head width (small: 64-d -> 4 heads, tiny: 16-d -> 2 heads).
_PROFILE_HEADS = {"paper": 12, "small": 4, "tiny": 2}


@dataclass(frozen=True)
class ModalTuneConfig:
    """The Modal Adapter's settings (release config keys in brackets).

    ``tasks``: task prompts, names from :data:`models.text.prompts.TEXT_TASKS`; with a single task
    no prompt token exists (the release's ``multi_task=1``). ``interaction_indexes``: inclusive
    encoder-layer groups per block [``interaction_indexes``]; ``None`` splits the encoder's layers
    into ``n_blocks`` near-equal groups (:func:`interaction_groups`). ``num_heads`` [``num_heads``]
    and ``ratio`` [``cffn_ratio``] size every adapter attention; ``init_gamma`` [``init_values``];
    ``drop_path`` the extractors' stochastic depth [GigaPath: the encoder's ``drop_path_rate`` 0.1,
    TITAN: ``drop_path_rate`` 0.2]; ``extra_extractors`` in the last block [``use_extra_extractor``:
    2]; ``prompt_self_attention`` [``use_prompt_sa``] with ``prompt_dropout``; ``token_agg``
    ``"sum"`` or ``"cat"`` [``token_agg``]; ``output_dim`` [``output_dim``]. ``checkpoint_encoder``
    recomputes each frozen encoder layer in the backward pass instead of storing its activations.
    The release's ``prompt_agg="avg"`` (pathway tokens averaged) is the only aggregation here.

    The parts, each switchable for Table 8's ablations (defaults: the release):
    ``adapter``: ``"modal_adapter"`` (the interaction blocks above) or ``"lora"`` (low-rank q/k/v
    updates in every frozen encoder layer, :mod:`models.modaltune.lora`, with ``lora_image_rank``
    [``img_lora_dim`` 4], ``lora_multimodal_rank`` [``mm_lora_dim`` 8], ``lora_alpha`` [32],
    ``lora_dropout`` [0]); ``gene_tokens``: ``"transcriptomics"`` (the Gene Mixer) or ``"learned"``
    (as many trainable tokens, RNA ignored: "Single Modal"); ``projector`` and ``text_encoder``:
    the text side of the distillation (:mod:`models.modaltune.projection`); ``clinical``: a clinical
    token from the patient's clinical variables joins the adapter tokens ("ModalTune w/ Clinical",
    Table 10; Modal Adapter only).
    """

    tasks: tuple[str, ...] = MODALTUNE_TASKS
    interaction_indexes: tuple[tuple[int, int], ...] | None = None
    n_blocks: int = 3
    num_heads: int = 12
    ratio: float = 0.25
    init_gamma: float = 0.0
    drop_path: float = 0.1
    extra_extractors: int = 2
    prompt_self_attention: bool = True
    prompt_dropout: float = 0.0
    token_agg: str = "sum"
    output_dim: int = 256
    checkpoint_encoder: bool = False
    adapter: str = "modal_adapter"
    gene_tokens: str = "transcriptomics"
    projector: str = "frozen"
    text_encoder: str = DEFAULT_TEXT_ENCODER
    lora_image_rank: int = 4
    lora_multimodal_rank: int = 8
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    clinical: bool = False

    def __post_init__(self) -> None:
        # Overrides may arrive as JSON lists: keep the sequences hashable and comparable.
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if self.interaction_indexes is not None:
            object.__setattr__(self, "interaction_indexes", tuple(tuple(g) for g in self.interaction_indexes))
        unknown = [t for t in self.tasks if t not in TEXT_TASKS]
        if unknown or not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be distinct names from {TEXT_TASKS}, got {self.tasks}")
        if "general" not in self.tasks:
            raise ValueError("the 'general' task is required: its embedding is the model's patient embedding")
        if self.token_agg not in ("sum", "cat"):
            raise ValueError(f"token_agg must be 'sum' or 'cat', got {self.token_agg!r}")
        if self.n_blocks < 1 or self.extra_extractors < 0 or self.output_dim < 1:
            raise ValueError("n_blocks and output_dim must be positive, extra_extractors non-negative")
        self._check_parts()

    def _check_parts(self) -> None:
        """The switchable parts name known choices; LoRA's ranks, alpha and dropout are in range."""
        for name, choices in (("adapter", ADAPTERS), ("gene_tokens", GENE_TOKENS), ("projector", PROJECTORS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        check_text_encoder(self.text_encoder)
        if self.lora_image_rank < 1 or self.lora_multimodal_rank < 1 or self.lora_alpha <= 0:
            raise ValueError("lora_image_rank, lora_multimodal_rank and lora_alpha must be positive")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must lie in [0, 1), got {self.lora_dropout}")
        if not isinstance(self.clinical, bool):
            raise ValueError(f"clinical must be true or false, got {self.clinical!r}")
        if self.clinical and self.adapter != "modal_adapter":
            raise ValueError("the clinical token is an adapter token of the Modal Adapter; adapter "
                             f"{self.adapter!r} has no place for it (use adapter='modal_adapter')")

    @classmethod
    def for_encoder(cls, encoder: str, profile: str, text_dim: int = 512, **overrides: object) -> ModalTuneConfig:
        """The release configuration for ``encoder`` (``gigapath`` or ``titan``) at ``profile``.

        ``paper`` uses the release's interaction indexes; ``small`` / ``tiny`` split the profile's
        shallow encoder with :func:`interaction_groups` (GigaPath small: 2 layers -> 2 blocks of one
        layer; tiny: 1 layer -> 1 block) and use fewer adapter heads (:data:`_PROFILE_HEADS`).
        ``overrides`` replace fields (an unknown name is a ValueError listing the valid ones). With
        ``projector="none"`` the output width is the text width ``text_dim``; an ``output_dim``
        that says otherwise is refused.
        """
        if encoder not in PAPER_CONFIGS:
            raise ValueError(f"unknown encoder {encoder!r}; expected one of {sorted(PAPER_CONFIGS)}")
        if profile not in _PROFILE_HEADS:
            raise ValueError(f"unknown profile {profile!r}; expected one of {sorted(_PROFILE_HEADS)}")
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise ValueError(f"ModalTune has no setting(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
        overrides = dict(overrides)
        if overrides.get("projector") == "none":
            if overrides.setdefault("output_dim", text_dim) != text_dim:
                raise ValueError(f"projector 'none' distils the text unprojected, so the output width is the "
                                 f"text width {text_dim}; drop output_dim={overrides['output_dim']}")
        config = PAPER_CONFIGS[encoder]
        if profile != "paper":
            config = replace(config, interaction_indexes=None, num_heads=_PROFILE_HEADS[profile])
        return replace(config, **overrides)


#: ``model_configs/modaltune_gigapath_config.json`` and ``modaltune_titan_config.json``.
PAPER_CONFIGS = {
    "gigapath": ModalTuneConfig(interaction_indexes=((0, 3), (4, 7), (8, 11)), drop_path=0.1, token_agg="sum"),
    "titan": ModalTuneConfig(interaction_indexes=((0, 1), (2, 3), (4, 5)), drop_path=0.2, token_agg="cat"),
}


@torch.no_grad()
def _release_init(module: nn.Module) -> None:
    """The release's ``_init_weights``: linears ``trunc_normal(std 0.02)`` with zero bias, unit
    LayerNorms. On the Gene Mixer it also covers the per-pathway S-MLP (one ``nn.Linear`` per
    pathway in the release) and skips the token-mixing MLPs, which the release writes as ``Conv1d``
    and therefore leaves at PyTorch's default initialisation."""
    blocks = [block for block in module.modules() if isinstance(block, MixerBlock)]
    token_mixers = {id(m) for block in blocks for m in block.token_mlp.modules()}
    for sub in module.modules():
        if id(sub) in token_mixers:
            continue
        if isinstance(sub, nn.Linear):
            nn.init.trunc_normal_(sub.weight, std=0.02)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LayerNorm):
            sub.reset_parameters()
        elif isinstance(sub, PathwaySNN):
            nn.init.trunc_normal_(sub.weight1, std=0.02)
            nn.init.trunc_normal_(sub.weight2, std=0.02)
            nn.init.zeros_(sub.bias1)
            nn.init.zeros_(sub.bias2)


class ModalTune(BenchModel):
    """ModalTune over a frozen :class:`~models.modaltune.backbones.SlideBackbone` (module docstring).

    ``gene_encoder`` maps ``rna [B, G]`` to tokens ``[B, n_tokens, D]`` (``forward_tokens``,
    ``n_tokens``, ``embed_dim == D``): the Gene Mixer in the paper, or
    :class:`~models.modaltune.gene_tokens.LearnedGeneTokens` (``gene_tokens="learned"``).

    ``forward_tasks(batch, tasks=None) -> [B, n, embed_dim]``: one embedding per task (all
    configured tasks, or the given task indexes, in order). ``forward_features(batch) -> [B,
    embed_dim]``: the ``general`` task's embedding (what the linear probes read). ``head``:
    ``Linear(embed_dim, n_outputs)`` for the supervised contract. ``embed_dim`` is ``output_dim``,
    or ``text_dim`` with the ``model_side`` projector (the trained ``text_project: Linear(output_dim,
    text_dim)`` ends the model). Reads ``features [B, N, F]``, ``coords [B, N, 2]``, ``mask [B, N]``
    (optional) and ``rna [B, G]``; every bag needs at least one real patch (patients without RNA are
    excluded upstream).

    With ``clinical`` the model also reads ``clinical [B, clinical_dim]`` (the encoded vector of
    :mod:`models.clinical`) and its adapter tokens are ``[task prompt; clinical token; pathway tokens]``.

    With ``adapter="lora"`` the interaction blocks, prompt self-attention and adapter-token
    positions are not built: every encoder layer runs with a :class:`~models.modaltune.lora.LayerLoRA`
    (``lora``) fed the task prompt and the mean gene token; the output fusion is unchanged.
    """

    modalities = ("wsi", "rna")

    def __init__(
        self, backbone: SlideBackbone, gene_encoder: nn.Module, config: ModalTuneConfig, n_outputs: int,
        text_dim: int | None = None, clinical_dim: int | None = None,
    ) -> None:
        super().__init__()
        dim = backbone.embed_dim
        if int(gene_encoder.embed_dim) != dim:
            raise ValueError(f"gene encoder width {gene_encoder.embed_dim} != slide encoder width {dim}")
        if config.projector == "model_side" and text_dim is None:
            raise ValueError("the model_side projector ends the model in the text width: give text_dim")
        if config.clinical and clinical_dim is None:
            raise ValueError("the clinical token reads the encoded clinical vector: give clinical_dim")
        groups = config.interaction_indexes or interaction_groups(backbone.depth, config.n_blocks)
        self.groups = validate_interaction_groups(groups, backbone.depth)
        self.config = config
        self.task_names = config.tasks
        self.n_tasks = len(config.tasks)
        self.general_index = config.tasks.index("general")
        self.checkpoint_encoder = config.checkpoint_encoder
        self.embed_dim = int(text_dim) if config.projector == "model_side" else config.output_dim

        self.backbone = backbone
        self.backbone.requires_grad_(False)
        self.backbone.encoder.eval()
        self.gene_encoder = gene_encoder
        multi = self.n_tasks > 1
        self.n_prompts = int(multi)
        self.n_clinical = int(config.clinical)
        self.clinical_tokens = ClinicalTokens(int(clinical_dim), dim) if config.clinical else None
        if config.adapter == "lora":
            self.interactions, self.prompt_attention, self.gene_pe = None, None, None
            self.lora = nn.ModuleList(
                LayerLoRA(dim, config.lora_image_rank, config.lora_multimodal_rank, config.lora_alpha,
                          config.lora_dropout, with_task=multi)
                for _ in range(backbone.depth)
            )
        else:
            self._build_modal_adapter(dim, config, int(gene_encoder.n_tokens))
            self.lora = None
        self.task_weight = nn.Sequential(nn.Linear(self.n_tasks, dim), nn.LayerNorm(dim)) if multi else None
        width = dim * (2 + self.n_prompts + self.n_clinical) if config.token_agg == "cat" else dim
        self.final_norm = nn.LayerNorm(width)
        self.final_project = nn.Linear(width, config.output_dim)
        self.text_project = nn.Linear(config.output_dim, self.embed_dim) if config.projector == "model_side" else None
        self.head = nn.Linear(self.embed_dim, n_outputs)
        self.reset_parameters()

    def _build_modal_adapter(self, dim: int, config: ModalTuneConfig, n_gene_tokens: int) -> None:
        """The release's Modal Adapter: interaction blocks, prompt self-attention, adapter-token positions."""
        n_blocks = len(self.groups)
        self.interactions = nn.ModuleList(
            InteractionBlock(
                dim,
                config.num_heads,
                config.ratio,
                init_gamma=config.init_gamma,
                drop_path=config.drop_path,
                extra_extractors=config.extra_extractors if block == n_blocks - 1 else 0,
            )
            for block in range(n_blocks)
        )
        self.prompt_attention = (
            nn.ModuleList(
                PromptSelfAttention(dim, config.num_heads, config.ratio, config.prompt_dropout)
                for _ in range(n_blocks - 1)
            )
            if config.prompt_self_attention
            else None
        )
        self.gene_pe = nn.Parameter(torch.zeros(self.n_prompts + self.n_clinical + n_gene_tokens, dim))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise every trainable part as the release (the frozen encoder and ``head`` untouched):
        interaction blocks and prompt attention by their own ``reset_parameters``; Gene Mixer, task
        prompts, clinical MLP and final layers (and the ``model_side`` projection) by :func:`_release_init`;
        ``gene_pe ~ trunc_normal(std 0.02)``; learned gene tokens and LoRA by their own
        ``reset_parameters`` (tokens ``trunc_normal(std 0.02)``; LoRA ``A`` Kaiming, ``B`` zero)."""
        for block in self.interactions or ():
            block.reset_parameters()
        for layer in self.prompt_attention or ():
            layer.reset_parameters()
        for module in (self.gene_encoder, self.task_weight, self.clinical_tokens, self.final_norm, self.final_project,
                       self.text_project):
            if isinstance(module, LearnedGeneTokens):
                module.reset_parameters()
            elif module is not None:
                _release_init(module)
        if self.gene_pe is not None:
            nn.init.trunc_normal_(self.gene_pe, std=0.02)
        for sub in self.lora.modules() if self.lora is not None else ():
            if isinstance(sub, LowRank):
                sub.reset_parameters()

    @property
    def text_rows(self) -> tuple[int, ...]:
        """Rows of ``batch["text"] [B, 4, E]`` matching :attr:`task_names` (release: ``(0, 1, 3)``)."""
        return tuple(TEXT_TASKS.index(name) for name in self.task_names)

    def train(self, mode: bool = True) -> ModalTune:
        """Switch the adapters' mode; the frozen encoder always stays in eval mode."""
        super().train(mode)
        self.backbone.encoder.eval()
        return self

    def parameter_groups(self) -> dict[str, int]:
        """Parameter count per component (``encoder`` is frozen, the rest trainable)."""
        parts: dict[str, nn.Module | None] = {
            "encoder": self.backbone,
            "gene_encoder": self.gene_encoder,
            "interactions": self.interactions,
            "prompt_attention": self.prompt_attention,
            "lora": self.lora,
            "task_weight": self.task_weight,
            "clinical": self.clinical_tokens,
            "final": nn.ModuleList([self.final_norm, self.final_project]),
            "text_project": self.text_project,
            "head": self.head,
        }
        counts = {name: count_parameters(module) if module is not None else 0 for name, module in parts.items()}
        counts["gene_pe"] = self.gene_pe.numel() if self.gene_pe is not None else 0
        return counts

    def _task_ids(self, tasks: Sequence[int] | None) -> list[int]:
        if tasks is None:
            return list(range(self.n_tasks))
        ids = [int(t) for t in tasks]
        if not ids or min(ids) < 0 or max(ids) >= self.n_tasks:
            raise ValueError(f"task indexes must lie in [0, {self.n_tasks}) ({self.task_names}), got {ids}")
        return ids

    def adapter_tokens(self, rna: torch.Tensor, task_ids: Sequence[int],
                       clinical: torch.Tensor | None = None) -> torch.Tensor:
        """Adapter tokens ``[B * n, n_prompts + n_clinical + n_tokens, D]``: per patient and task (task
        fastest), the task prompt, the clinical token (``clinical [B, C]``, with the ``clinical`` part)
        and the patient's pathway tokens."""
        n = len(task_ids)
        tokens = self.gene_encoder.forward_tokens(rna)  # [B, G, D]
        if self.clinical_tokens is not None:
            if clinical is None:
                raise ValueError("ModalTune w/ Clinical reads batch['clinical'] (the encoded clinical vector)")
            tokens = torch.cat([self.clinical_tokens(clinical), tokens], dim=1)
        if self.task_weight is None:
            return tokens  # one task: n == 1
        weight = self.task_weight[0].weight
        one_hot = torch.eye(self.n_tasks, dtype=weight.dtype, device=weight.device)[list(task_ids)]
        prompts = self.task_weight(one_hot)  # [n, D]
        return torch.cat([prompts.repeat(tokens.shape[0], 1).unsqueeze(1), tokens.repeat_interleave(n, dim=0)], dim=1)

    def _run_layer(self, index: int, tokens: torch.Tensor, context: object) -> torch.Tensor:
        if self.checkpoint_encoder and torch.is_grad_enabled() and tokens.requires_grad:
            return checkpoint(self.backbone.run_layer, index, tokens, context, use_reentrant=False)
        return self.backbone.run_layer(index, tokens, context)

    def _run_lora_layer(
        self, index: int, tokens: torch.Tensor, context: object, gene: torch.Tensor, task: torch.Tensor | None
    ) -> torch.Tensor:
        run = self.backbone.run_lora_layer
        if self.checkpoint_encoder and torch.is_grad_enabled():
            return checkpoint(run, index, tokens, context, self.lora[index], gene, task, use_reentrant=False)
        return run(index, tokens, context, self.lora[index], gene, task)

    def _fuse(self, image: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Image feature, task token, mean pathway token and clinical token (the release's order) -> summed
        ``[B, D]`` or concatenated ``[B, kD]``."""
        first_gene = self.n_prompts + self.n_clinical
        parts = [image, *([c[:, 0]] if self.n_prompts else []), c[:, first_gene:].mean(dim=1),
                 *([c[:, self.n_prompts]] if self.n_clinical else [])]
        if self.config.token_agg == "cat":
            return torch.cat(parts, dim=-1)
        return torch.stack(parts).sum(dim=0)

    def _encode_modal_adapter(self, bag: EncodedBag, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen encoder interleaved with the interaction blocks -> (image ``[B, D]``, adapter tokens)."""
        tokens = bag.tokens
        for index in range(self.groups[0][0]):
            tokens = self._run_layer(index, tokens, bag.context)
        pos = self.gene_pe.to(c.dtype)
        for block_index, (block, (first, last)) in enumerate(zip(self.interactions, self.groups, strict=True)):
            if block_index > 0 and self.prompt_attention is not None:
                c = self.prompt_attention[block_index - 1](c, pos)
            patches = block.inject(tokens[:, 1:], c, pos)
            tokens = torch.cat([tokens[:, :1], patches], dim=1)
            for index in range(first, last + 1):
                tokens = self._run_layer(index, tokens, bag.context)
            c = block.extract(c, tokens[:, 1:], pos, bag.patch_mask)
        return self.backbone.slide_embedding(tokens, bag), c

    def _encode_lora(self, bag: EncodedBag, c: torch.Tensor) -> torch.Tensor:
        """Every encoder layer with its LoRA updates, fed the task prompt and the mean gene token ->
        the image feature ``[B, D]`` (the adapter tokens themselves are not updated)."""
        gene = c[:, self.n_prompts :].mean(dim=1, keepdim=True)
        task = c[:, :1] if self.n_prompts else None
        tokens = bag.tokens
        for index in range(self.backbone.depth):
            tokens = self._run_lora_layer(index, tokens, bag.context, gene, task)
        return self.backbone.slide_embedding(tokens, bag)

    def forward_tasks(self, batch: dict[str, torch.Tensor], tasks: Sequence[int] | None = None) -> torch.Tensor:
        """Per-task embeddings ``[B, n, embed_dim]`` for the task indexes ``tasks`` (default: all)."""
        features, coords = batch["features"], batch["coords"]
        mask = batch.get("mask")
        if mask is not None:
            mask = bag_mask(batch)
            if not bool(mask.any(dim=1).all()):
                raise ValueError("ModalTune needs at least one real patch in every bag")
        task_ids = self._task_ids(tasks)
        n = len(task_ids)
        c = self.adapter_tokens(batch["rna"], task_ids, batch.get("clinical") if self.n_clinical else None)
        bag = self.backbone.embed(features, coords, mask)
        if n > 1:
            bag = self.backbone.repeat(bag, n)
        if self.lora is not None:
            image = self._encode_lora(bag, c)
        else:
            image, c = self._encode_modal_adapter(bag, c)
        out = self.final_project(self.final_norm(self._fuse(image, c)))
        if self.text_project is not None:
            out = self.text_project(out)
        return out.view(features.shape[0], n, -1)

    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The ``general`` task's embedding ``[B, embed_dim]`` (the linear probes' features)."""
        return self.forward_tasks(batch, (self.general_index,))[:, 0]
