"""Tests for the text datasets: SST-2 and AG News row counts and labels, the [CLS]/[PAD] layout of the token tensors,
the WordPiece tokenizer (trained on SST-2 train only, deterministic across processes, cached as JSON)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("tokenizers")

from pyro_lowrank.datasets import text as text_module  # noqa: E402
from pyro_lowrank.datasets.text import (  # noqa: E402
    CLS_ID,
    PAD_ID,
    UNK_ID,
    clean_ag_news,
    encode,
    load_ag_news,
    load_sst2,
    sst2_tokenizer,
    train_wordpiece,
)

CORPUS = ["a gorgeous , witty , seductive movie .", "the plot is nothing but boilerplate clichés from start to finish",
          "an intermittently pleasing but mostly routine effort .", "it 's a charming and often affecting journey .",
          "unflinchingly bleak and desperate", "allows us to hope that nolan is poised to embark a major career"] * 3


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tokenizer_cache")


@pytest.fixture(scope="module")
def sst2(data_root, cache):
    return load_sst2(data_root, max_len=64, vocab_size=8000, seed=0, val_size=500, cache_dir=cache)


def _layout_ok(tokens: torch.Tensor, vocab_size: int) -> None:
    assert tokens.dtype == torch.int64 and (tokens[:, 0] == CLS_ID).all()
    assert ((tokens >= 0) & (tokens < vocab_size)).all()
    padding = tokens == PAD_ID
    # Padding is a suffix: once a row has [PAD], every later position is [PAD] too; [CLS] never reappears.
    assert torch.equal(padding, padding.cummax(dim=1).values)
    assert not (tokens[:, 1:] == CLS_ID).any()


def test_sst2_counts_labels_and_layout(sst2):
    assert sst2.x_train.shape == (67349 - 500, 64) and sst2.x_val.shape == (500, 64)
    assert sst2.x_dev.shape == (872, 64) and sst2.max_len == 64 and sst2.vocab_size == 8000
    labels = torch.cat([sst2.y_train, sst2.y_val])
    assert labels.dtype == torch.int64 and labels.bincount().tolist() == [29780, 37569]  # MANIFEST.md
    assert sst2.y_dev.bincount().tolist() == [428, 444]
    for tokens in (sst2.x_train, sst2.x_val, sst2.x_dev):
        _layout_ok(tokens, sst2.vocab_size)
    assert (sst2.pad_id, sst2.unk_id, sst2.cls_id) == (0, 1, 2)
    assert sst2.tokenizer.token_to_id("[PAD]") == 0 and sst2.tokenizer.token_to_id("[CLS]") == 2
    # First dev sentence: "it 's a charming and often affecting journey . " (lowercased WordPiece, round trip)
    assert sst2.tokenizer.decode(sst2.x_dev[0].tolist()) == "it ' s a charming and often affecting journey."


def test_tokenizer_is_cached_and_reloaded(data_root, sst2, cache):
    files = list(cache.glob("sst2-wordpiece-8000-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["model"]["type"] == "WordPiece"
    again = sst2_tokenizer(data_root, 8000, cache_dir=cache)
    assert again.to_str() == sst2.tokenizer.to_str()


def test_cache_never_goes_under_the_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("PYRO_LOWRANK_DATA", str(tmp_path / "user"))
    assert text_module._cache_folder(None) == tmp_path / "user" / "cache"
    with pytest.raises(ValueError, match="cache_dir must be a writable folder"):
        blocker = tmp_path / "file"
        blocker.write_text("")
        text_module._cache_folder(blocker / "cache")


def test_training_is_deterministic_across_processes():
    here = train_wordpiece(CORPUS, 120)
    assert here.to_str() == train_wordpiece(CORPUS, 120).to_str()
    script = ("import json, sys; from pyro_lowrank.datasets.text import train_wordpiece; "
              "print(json.dumps(train_wordpiece(json.loads(sys.argv[1]), 120).get_vocab(), sort_keys=True))")
    # The library's own WordPiece trainer gives a different vocabulary in almost every process on this corpus.
    output = subprocess.run([sys.executable, "-c", script, json.dumps(CORPUS)], capture_output=True, text=True,
                            check=True, env={**os.environ, "PYTHONHASHSEED": "1"}).stdout
    assert json.loads(output) == here.get_vocab()


def test_encode_truncates_and_pads_exactly():
    tokenizer = train_wordpiece(CORPUS, 120)
    tokens = encode(tokenizer, ["A gorgeous movie", "", "witty " * 20], max_len=6)
    pieces = tokenizer.encode("a gorgeous movie", add_special_tokens=False).ids
    assert tokens[0].tolist() == ([CLS_ID] + pieces + [PAD_ID] * 5)[:6]
    assert tokens[1].tolist() == [CLS_ID] + [PAD_ID] * 5
    assert (tokens[2, 1:] != PAD_ID).all()  # truncated to max_len - 1 pieces
    assert encode(tokenizer, ["zebra"], max_len=4)[0, 1:].tolist().count(UNK_ID) >= 1  # 'z' unseen in training
    with pytest.raises(ValueError, match="max_len must be an integer >= 2"):
        encode(tokenizer, ["a"], max_len=1)
    with pytest.raises(TypeError, match="texts must be a sequence of str, not a single str"):
        encode(tokenizer, "a movie", max_len=8)
    with pytest.raises(ValueError, match="vocab_size must be an integer > 3, got 2"):
        train_wordpiece(CORPUS, 2)


def test_ag_news_counts_cleaning_and_subset(data_root, sst2):
    news = load_ag_news(sst2.tokenizer, data_root, max_len=64)
    assert news.x.shape == (7600, 64) and news.y.bincount().tolist() == [1900] * 4  # MANIFEST.md
    _layout_ok(news.x, sst2.vocab_size)
    assert not any("\\" in t or "#39;" in t or "quot;" in t for t in news.texts)
    assert news.texts[0].startswith("Fears for T N pension after talks Unions representing workers")
    assert clean_ag_news("a\\b #39;c&lt;d quot;e") == "a b 'c<d \"e"
    subset = load_ag_news(sst2.tokenizer, data_root, max_len=32, num=100, seed=3)
    again = load_ag_news(sst2.tokenizer, data_root, max_len=32, num=100, seed=3)
    assert subset.x.shape == (100, 32) and torch.equal(subset.x, again.x) and subset.texts == again.texts
    assert set(subset.texts) <= set(news.texts)
    with pytest.raises(ValueError, match=r"num must be an integer in \[1, 7600\] or None, got 0"):
        load_ag_news(sst2.tokenizer, data_root, num=0)
