"""Text encoders (bow, CONCH tower + tokenizer, HF), the frozen Projector and the cohort text cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.data import format as fmt
from bench.errors import BenchError
from bench.text_cache import cache_path, cohort_prompts, load_text_cache, write_text_cache
from models.text import (
    BowEncoder,
    ByteLevelBPETokenizer,
    ConchEncoder,
    ConchTextConfig,
    ConchTextTower,
    build_text_encoder,
    mean_pool,
)
from models.text.projector import TextProjector
from models.text.prompts import TEXT_TASKS
from models.text.tokenizer import _bytes_to_unicode

SPECIALS = ["<pad>", "<start_of_text>", "<end_of_text>"]


def tokenizer_spec(merges: list[str]) -> dict:
    """A CONCH-layout tokenizer.json: 3 specials, the 256 byte symbols, then one token per merge."""
    symbols = SPECIALS + list(_bytes_to_unicode().values())
    symbols += ["".join(m.split(" ")) for m in merges if "".join(m.split(" ")) not in symbols]
    return {
        "version": "1.0",
        "added_tokens": [{"id": i, "content": s, "special": True, "normalized": False} for i, s in enumerate(SPECIALS)],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "StripAccents"},
                                                           {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<start_of_text>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "<end_of_text>", "type_id": 0}}],
            "special_tokens": {"<start_of_text>": {"id": "<start_of_text>", "ids": [1], "tokens": ["<start_of_text>"]},
                               "<end_of_text>": {"id": "<end_of_text>", "ids": [2], "tokens": ["<end_of_text>"]}},
        },
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "vocab": {s: i for i, s in enumerate(symbols)}, "merges": merges},
    }


KIDNEY_MERGES = ["Ġ k", "i d", "n e", "Ġk id", "ne y", "Ġkid ney"]


def make_tokenizer(merges=KIDNEY_MERGES) -> ByteLevelBPETokenizer:
    return ByteLevelBPETokenizer(tokenizer_spec(merges))


def tokens(tok: ByteLevelBPETokenizer, text: str) -> list[str]:
    inverse = {i: s for s, i in tok.vocab.items()}
    return [inverse[i] for i in tok.encode(text)]


# ============================================================================================ tokenizer
def test_byte_table_is_gpt2s():
    table = _bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert (table[ord(" ")], table[ord("\n")], table[ord("a")], table[0]) == ("Ġ", "Ċ", "a", "Ā")


def test_bpe_merges_normalises_and_prefixes_a_space():
    tok = make_tokenizer()
    assert tokens(tok, "Kidney;") == ["Ġkidney", ";"]
    assert tok.encode("KIDNÉY;") == tok.encode("kidney;")  # NFD + strip accents + lowercase


def test_bpe_applies_merges_by_rank_not_left_to_right():
    assert tokens(make_tokenizer(["b c", "a b"]), "abc") == ["Ġ", "a", "bc"]
    assert tokens(make_tokenizer(["a b", "b c"]), "abc") == ["Ġ", "ab", "c"]


def test_pretokeniser_splits_words_numbers_and_keeps_extra_spaces():
    # merges that would cross piece boundaries must not apply
    tok = make_tokenizer(["e Ġ", "5 m", "Ġ a", "Ġ b"])
    assert tokens(tok, "x 15months") == ["Ġ", "x", "Ġ", "1", "5", "m", "o", "n", "t", "h", "s"]
    assert tokens(tok, "tree tree") == ["Ġ", "t", "r", "e", "e", "Ġ", "t", "r", "e", "e"]
    assert tokens(tok, "a  b") == ["Ġa", "Ġ", "Ġb"]
    assert tok.encode("kidney<end_of_text>")[-1] == 2


def test_batch_wraps_truncates_and_pads():
    tok = make_tokenizer()
    kidney, semi = tok.vocab["Ġkidney"], tok.vocab[";"]
    ids = tok.batch(["kidney;", "abcdefgh"], max_length=6)
    assert ids[0].tolist() == [1, kidney, semi, 2, 0, 0]
    assert ids[1].tolist() == [1, tok.vocab["Ġ"], tok.vocab["a"], tok.vocab["b"], tok.vocab["c"], 2]


def test_unsupported_tokenizer_files_are_named(tmp_path):
    spec = tokenizer_spec([])
    spec["pre_tokenizer"] = {"type": "Whitespace"}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="ByteLevel"):
        ByteLevelBPETokenizer.from_file(path)


# ============================================================================================ CONCH tower
def test_conch_text_tower_paper_parameter_count():
    with torch.device("meta"):
        tower = ConchTextTower(ConchTextConfig())
    width, vocab, ctx, layers, out = 768, 32007, 128, 12, 512
    norms, attn, mlp = 2 * 2 * width, 4 * width * width + 4 * width, 2 * 4 * width * width + 5 * width
    expected = vocab * width + ctx * width + width + layers * (norms + attn + mlp) + 2 * width + width * out
    assert sum(p.numel() for p in tower.parameters()) == expected
    assert sum(p.numel() for p in tower.parameters()) == 110_129_664


TINY = ConchTextConfig(vocab_size=len(tokenizer_spec(KIDNEY_MERGES)["model"]["vocab"]), context_length=16, width=128,
                       heads=2, layers=2, mlp_width=256, output_dim=32)


def random_tower(seed=0) -> ConchTextTower:
    torch.manual_seed(seed)
    tower = ConchTextTower(TINY).eval()
    with torch.no_grad():  # non-trivial LayerNorm and biases, so a key mix-up cannot go unnoticed
        for name, p in tower.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    return tower


def reference_forward(tower: ConchTextTower, ids: torch.Tensor) -> torch.Tensor:
    """CoCa text encoding written with nn.MultiheadAttention on the (L, N, D) layout and an additive mask."""
    cfg = tower.cfg
    text = ids[:, :-1]
    b, n = text.shape
    length = n + 1
    mask = torch.zeros(b, length, length)
    for i in range(length):
        for j in range(length):
            if j > i:
                mask[:, i, j] = float("-inf")
    for row in range(b):
        for j in range(1, length):  # the [CLS] row: key j is visible iff token j - 1 is not padding
            if text[row, j - 1] == cfg.pad_id:
                mask[row, -1, j] = float("-inf")
    mask = mask.repeat_interleave(cfg.heads, dim=0)
    x = torch.cat([tower.token_embedding.weight[text], tower.cls_emb.expand(b, 1, -1)], dim=1)
    x = (x + tower.positional_embedding[:length]).transpose(0, 1)
    for block in tower.transformer["resblocks"]:
        mha = nn.MultiheadAttention(cfg.width, cfg.heads)
        mha.load_state_dict(block.attn.state_dict())
        h = block.ln_1(x)
        x = x + mha(h, h, h, attn_mask=mask, need_weights=False)[0]
        x = x + block.mlp.c_proj(F.gelu(block.mlp.c_fc(block.ln_2(x))))
    return tower.ln_final(x[-1]) @ tower.text_projection


def test_tower_matches_a_multihead_attention_reference():
    tower = random_tower()
    ids = torch.tensor([[1, 40, 41, 42, 2] + [0] * 11, [1] + list(range(50, 63)) + [2, 0], [1, 2] + [0] * 14])
    with torch.no_grad():
        assert torch.allclose(tower(ids), reference_forward(tower, ids), atol=1e-5)


def test_cls_mask_sees_real_tokens_and_the_first_pad():
    tower = random_tower()
    mask = tower.attention_mask(torch.tensor([[1, 5, 2, 0, 0]]))[0, 0]
    assert mask[-1].tolist() == [True, True, True, True, False, False]
    assert torch.equal(mask[:-1], torch.ones(6, 6, dtype=torch.bool).tril()[:-1])


def test_text_embedding_ignores_the_rest_of_the_batch():
    tower = random_tower()
    ids = make_tokenizer().batch(["kidney; renal clear cell", "x"], 15)
    ids = F.pad(ids, (0, 1))
    with torch.no_grad():
        assert torch.allclose(tower(ids)[:1], tower(ids[:1]), atol=1e-6)


def save_conch_checkpoint(folder: Path, tower: ConchTextTower, drop: str | None = None,
                          extra: str | None = None) -> Path:
    """A checkpoint in CONCH's layout ({"state_dict": {"module.text.*", "module.visual.*", ...}}), tokenizer beside."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {f"module.text.{k}": v.clone() for k, v in tower.state_dict().items() if k != drop}
    if extra:
        state[f"module.text.{extra}"] = torch.zeros(3)
    state["module.visual.trunk.cls_token"] = torch.randn(1, 1, 8)
    state["module.logit_scale"] = torch.tensor(2.659)
    path = folder / "pytorch_model.bin"
    torch.save({"state_dict": state}, path)
    (folder / "conch_byte_level_bpe_uncased.json").write_text(json.dumps(tokenizer_spec(KIDNEY_MERGES)))
    return path


def test_conch_checkpoint_loads_strictly_and_embeds(tmp_path):
    tower = random_tower(seed=3)
    weights = save_conch_checkpoint(tmp_path / "conch", tower)
    encoder = build_text_encoder("conch", weights=weights)
    assert isinstance(encoder, ConchEncoder) and encoder.dim == 32 and encoder.tower.cfg == TINY
    texts = ["Cancer location: kidney;", "Kidney; renal clear cell carcinoma"]
    emb = encoder.encode(texts)
    ids = F.pad(make_tokenizer().batch(texts, 15), (0, 1))
    with torch.no_grad():
        assert torch.allclose(emb, F.normalize(tower(ids), dim=-1), atol=1e-5)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(emb[0], emb[1])


@pytest.mark.parametrize(("drop", "extra", "message"), [
    ("ln_final.weight", None, "missing.*ln_final.weight"),
    (None, "transformer.resblocks.0.attn.bias_k", "unexpected.*bias_k"),
])
def test_conch_checkpoint_with_wrong_keys_is_refused(tmp_path, drop, extra, message):
    weights = save_conch_checkpoint(tmp_path / "conch", random_tower(), drop=drop, extra=extra)
    with pytest.raises(ValueError, match=message):
        build_text_encoder("conch", weights=weights)


def test_conch_needs_weights_and_a_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="--text-weights"):
        build_text_encoder("conch")
    weights = save_conch_checkpoint(tmp_path / "conch", random_tower())
    (tmp_path / "conch" / "conch_byte_level_bpe_uncased.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        build_text_encoder("conch", weights=weights)


# ============================================================================================ bow
T1N2 = "Tumor stage status: tumor stage one; Lymph node status: node stage two; before 8 months"
T2N1 = "Tumor stage status: tumor stage two; Lymph node status: node stage one; before 8 months"
T1N2_9 = "Tumor stage status: tumor stage one; Lymph node status: node stage two; before 9 months"


def test_bow_is_seeded_normalised_and_tells_staging_and_bins_apart():
    texts = [T1N2, T2N1, T1N2_9, T1N2]
    emb = BowEncoder(seed=0).fit(texts).encode(texts)
    assert emb.shape == (4, 512) and torch.allclose(emb.norm(dim=-1), torch.ones(4))
    assert torch.equal(emb, BowEncoder(seed=0).fit(texts).encode(texts))
    assert torch.equal(emb[0], emb[3])
    assert (emb[0] @ emb[1]).item() < 0.99 and (emb[0] @ emb[2]).item() < 0.99
    assert not torch.allclose(emb, BowEncoder(seed=1).fit(texts).encode(texts))


def test_bow_must_be_fitted_and_unknown_specs_are_listed():
    with pytest.raises(RuntimeError, match="not fitted"):
        BowEncoder().encode(["x"])
    with pytest.raises(ValueError, match="bow, conch, hf:DIR"):
        build_text_encoder("clip")


# ============================================================================================ HF
def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.equal(mean_pool(hidden, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))


def test_hf_without_transformers_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="'transformers' package"):
        build_text_encoder(f"hf:{tmp_path}")


def test_hf_local_model_is_mean_pooled(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed (hf:DIR is optional)")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cancer", "location", ":", "kidney", "breast", ";"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizer(str(tmp_path / "vocab.txt"))
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32)
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    model_dir = tmp_path / "tiny-bert"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    texts = ["Cancer location: kidney;", "Cancer location: breast; breast; breast;"]
    encoder = build_text_encoder(f"hf:{model_dir}")
    assert encoder.name == "hf-tiny-bert" and encoder.dim == 16
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    expected = F.normalize(mean_pool(hidden, enc["attention_mask"]), dim=-1)
    assert torch.allclose(encoder.encode(texts), expected, atol=1e-5)


# ============================================================================================ projector
def test_projector_is_frozen_seeded_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a, b, c = TextProjector(seed=0), TextProjector(seed=0), TextProjector(seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert not any(p.requires_grad for p in a.parameters())
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.layers[0].weight, c.layers[0].weight)
    assert any(p.requires_grad for p in TextProjector(trainable=True).parameters())


def test_projector_draws_the_release_layers_after_manual_seed():
    torch.manual_seed(7)
    release = nn.Sequential(nn.Conv2d(512, 256, 1), nn.LayerNorm([256, 1, 1]), nn.ReLU(inplace=True),
                            nn.Conv2d(256, 256, 1))
    ours = TextProjector(512, 256, seed=7)
    assert [tuple(p.shape) for p in ours.parameters()] == [(256, 512, 1, 1), (256,), (256, 1, 1), (256, 1, 1),
                                                           (256, 256, 1, 1), (256,)]
    assert all(torch.equal(p, q) for p, q in zip(ours.parameters(), release.parameters()))


def test_projector_maps_text_batches_as_linear_layernorm_relu_linear():
    proj = TextProjector(32, 8, seed=0)
    with torch.no_grad():
        proj.layers[1].weight.normal_()
        proj.layers[1].bias.normal_()
    text = torch.randn(3, 4, 32)
    conv1, norm, _, conv2 = proj.layers
    h = F.layer_norm(text @ conv1.weight[:, :, 0, 0].T + conv1.bias, (8,), norm.weight.flatten(), norm.bias.flatten())
    raw = torch.relu(h) @ conv2.weight[:, :, 0, 0].T + conv2.bias
    assert torch.allclose(proj(text, normalize=False), raw, atol=1e-5)
    assert torch.allclose(proj(text), F.normalize(raw, dim=-1), atol=1e-5)


# ============================================================================================ cohort cache
def test_bow_cache_round_trip_and_staleness(rcc_copy):
    path = write_text_cache(rcc_copy, "bow")
    assert path == cache_path(rcc_copy, "bow") == rcc_copy / "text" / "bow.pt"
    cache = load_text_cache(rcc_copy, "bow")
    prompts = cohort_prompts(rcc_copy)
    cases = list(prompts)
    assert cache.encoder == "bow" and "not CONCH" in cache.label and cache.dim == 512
    matrix = cache.matrix(cases)
    assert matrix.shape == (len(cases), len(TEXT_TASKS), 512)
    assert torch.allclose(matrix.norm(dim=-1), torch.ones(len(cases), len(TEXT_TASKS)))
    general = [prompts[c]["general"] for c in cases]
    distinct_rows = torch.unique(matrix[:, 0], dim=0).shape[0]
    assert distinct_rows == len(set(general))  # equal texts embed equally, different texts differently
    write_text_cache(rcc_copy, "bow")
    assert torch.equal(load_text_cache(rcc_copy, "bow").matrix(cases), matrix)
    with pytest.raises(BenchError, match="lack 1 patients"):
        cache.matrix(cases[:2] + ["TCGA-ZZ-0000"])

    patients = pd.read_csv(rcc_copy / fmt.PATIENTS, dtype=str, keep_default_na=False)
    patients.loc[0, "event"] = "0" if patients.loc[0, "event"] == "1" else "1"
    patients.to_csv(rcc_copy / fmt.PATIENTS, index=False)
    with pytest.raises(BenchError, match="re-run `python -m bench text embed"):
        load_text_cache(rcc_copy, "bow")


def test_release_embedding_file_is_rekeyed(rcc_copy):
    patients = pd.read_csv(rcc_copy / fmt.PATIENTS, dtype=str)
    torch.manual_seed(0)
    record = {case: torch.randn(4, 512) for case in patients["case_id"]}
    (rcc_copy / "text").mkdir(exist_ok=True)
    torch.save(record, rcc_copy / "text" / "release.pt")
    cache = load_text_cache(rcc_copy, "release")
    assert cache.dim == 512 and torch.equal(cache.matrix([patients["case_id"][3]])[0], record[patients["case_id"][3]])
    with pytest.raises(BenchError, match="missing"):
        load_text_cache(rcc_copy, "conch")


def test_conch_cache_from_a_tiny_checkpoint(rcc_copy, tmp_path):
    tower = random_tower(seed=5)
    weights = save_conch_checkpoint(tmp_path / "conch", tower)
    write_text_cache(rcc_copy, "conch", weights=weights)
    cache = load_text_cache(rcc_copy, "conch")
    prompts = cohort_prompts(rcc_copy)
    first = next(iter(prompts))
    ids = F.pad(make_tokenizer().batch([prompts[first][t] for t in TEXT_TASKS], 15), (0, 1))
    with torch.no_grad():
        expected = F.normalize(tower(ids), dim=-1)
    assert cache.encoder == "conch" and "CONCH" in cache.label
    assert torch.allclose(cache.matrix([first])[0], expected, atol=1e-5)
