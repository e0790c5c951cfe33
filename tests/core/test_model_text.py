"""Text encoders: the built-in hashing encoder and umT5 from a local directory (tiny random)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from aimg.model.build import build_text_encoder
from aimg.model.config import CodecConfig, ModelConfig, TextConfig, TransformerConfig
from aimg.model.text import HashTextEncoder, UMT5TextEncoder, tokenize_words, word_vector


def test_builtin_encoder_is_deterministic_across_instances():
    a = HashTextEncoder(dim=32, max_length=8).encode(["Pick up the red cube."])
    b = HashTextEncoder(dim=32, max_length=8).encode(["pick up the red cube"])
    assert a.shape == (1, 8, 32)
    assert torch.equal(a, b)


def test_builtin_encoder_zeroes_positions_past_the_prompt():
    emb = HashTextEncoder(dim=16, max_length=8).encode(["open the drawer"])
    assert emb[0, :3].abs().sum(dim=-1).min() > 0
    assert torch.count_nonzero(emb[0, 3:]) == 0


def test_empty_prompt_gives_all_zero_embeddings():
    assert torch.count_nonzero(HashTextEncoder(dim=16, max_length=4).encode([""])) == 0


def test_builtin_encoder_distinguishes_words_and_order():
    enc = HashTextEncoder(dim=16, max_length=4)
    a, b, c = enc.encode(["push block", "push cube", "block push"])
    assert not torch.equal(a, b)
    assert not torch.equal(a, c)


def test_builtin_encoder_truncates_to_max_length():
    emb = HashTextEncoder(dim=8, max_length=2).encode(["a b c d"])
    assert emb.shape == (1, 2, 8)


def test_word_vectors_have_unit_variance():
    v = word_vector("gripper", 4096)
    assert abs(float(v.var()) - 1.0) < 0.1
    assert tokenize_words("Put the Mug, on-the shelf!") == [
        "put",
        "the",
        "mug",
        "on",
        "the",
        "shelf",
    ]


def test_text_cache_is_bounded_and_reused():
    enc = HashTextEncoder(dim=8, max_length=2, cache_size=2)
    first = enc.encode(["a"])
    enc.encode(["b", "c"])
    assert len(enc._cache) == 2
    assert torch.equal(enc.encode(["a"]), first)


@pytest.fixture(scope="module")
def tiny_umt5_dir(tmp_path_factory) -> str:
    pytest.importorskip("transformers", reason="umT5 needs the `train` extra")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    words = ["<pad>", "</s>", "<unk>", "pick", "the", "red", "cube", "open", "drawer"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = UMT5Config(
        vocab_size=len(words),
        d_model=16,
        d_kv=4,
        d_ff=32,
        num_layers=1,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
    )
    path = tmp_path_factory.mktemp("umt5")
    UMT5EncoderModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_umt5_encoder_pads_to_max_length_and_zeroes_padding(tiny_umt5_dir):
    enc = UMT5TextEncoder.from_directory(tiny_umt5_dir, max_length=12)
    assert enc.dim == 16
    emb = enc.encode(["pick the  red cube", "open the drawer"])
    assert emb.shape == (2, 12, 16)
    assert emb[0, :4].abs().sum(dim=-1).min() > 0
    assert torch.count_nonzero(emb[0, 4:]) == 0
    assert torch.count_nonzero(emb[1, 3:]) == 0


def test_umt5_embeddings_do_not_depend_on_the_batch(tiny_umt5_dir):
    enc = UMT5TextEncoder.from_directory(tiny_umt5_dir, max_length=12)
    pair = enc.encode(["pick the red cube", "open the drawer"])
    fresh = UMT5TextEncoder.from_directory(tiny_umt5_dir, max_length=12)
    torch.testing.assert_close(fresh.encode(["open the drawer"])[0], pair[1], atol=1e-6, rtol=0)


def test_umt5_needs_a_local_directory(tmp_path):
    with pytest.raises(ValueError, match="not a local umT5 encoder directory"):
        UMT5TextEncoder.from_directory(tmp_path)


def test_build_text_encoder_checks_the_umt5_width(tiny_umt5_dir):
    text = TextConfig(kind="umt5", path=tiny_umt5_dir, max_length=8)
    transformer = TransformerConfig(
        num_layers=1, num_heads=2, head_dim=8, ffn_dim=8, text_dim=16, cam_pool=(2, 1, 1)
    )
    codec = CodecConfig(kind="pixel", spatial_factor=8, temporal_factor=4)
    cfg = ModelConfig(transformer=transformer, codec=codec, text=text, height=32, width=32)
    assert build_text_encoder(cfg).encode(["open the drawer"]).shape == (1, 8, 16)
    wrong = ModelConfig(
        transformer=replace(transformer, text_dim=4096), codec=codec, text=text, height=32, width=32
    )
    with pytest.raises(
        ValueError, match="outputs 16 features but the transformer's text_dim is 4096"
    ):
        build_text_encoder(wrong)
