"""Shared fixtures: a tiny random BERT saved like a real checkpoint, and tiny task data.

Nothing here downloads: the model is built from a config and saved to a temporary folder, and is
then loaded through the same `from_pretrained` path a user's backbone takes.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The CLI prints through rich, which wraps at the terminal width (80 without one): a long temp path
# would break a word the tests look for, depending on pytest's run counter.
os.environ["COLUMNS"] = "240"

WORDS = [
    "the", "a", "an", "is", "was", "it", "this", "that", "movie", "film", "great", "good", "bad", "awful",
    "terrible", "wonderful", "boring", "loved", "hated", "my", "order", "package", "refund", "invoice",
    "charge", "account", "password", "login", "delivery", "where", "when", "what", "who", "did", "same",
    "meaning", "different", "says", "cat", "dog", "sat", "on", "mat", "paris", "capital", "france", "of",
    "city", "river", "question", "answer",
]


def write_tiny_bert(folder: Path, seed: int = 0, initializer_range: float = 0.02) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = specials + sorted(set(WORDS)) + chars + [f"##{c}" for c in string.ascii_lowercase + string.digits]
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(dict.fromkeys(vocab))},
                                  do_lower_case=True)
    tokenizer.save_pretrained(folder)
    # No dropout: its masks are drawn differently on CUDA, and with them the tiny learned router trained
    # there routed at chance; without it training takes the same steps on a CPU and a GPU.
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, initializer_range=initializer_range,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def other_tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same shape as `tiny_bert`, other weights: an adapter must refuse to load on it."""
    return write_tiny_bert(tmp_path_factory.mktemp("other-bert"), seed=1)


SENTIMENT = [("loved this great movie", "positive"), ("wonderful film", "positive"),
             ("great good movie", "positive"), ("this film was wonderful", "positive"),
             ("hated this awful movie", "negative"), ("terrible boring film", "negative"),
             ("bad awful movie", "negative"), ("this film was boring", "negative")]
PARAPHRASE = [("the cat sat on the mat", "a cat sat on a mat", 1), ("the dog sat", "the dog sat", 1),
              ("paris is the capital", "the capital is paris", 1), ("a dog sat on a mat", "the dog sat on the mat", 1),
              ("the cat sat", "where is my refund", 0), ("the city of paris", "a cat on the river", 0),
              ("paris river", "login charge", 0), ("what did the dog", "invoice refund", 0)]
SUPPORT = [("where is my refund", "billing"), ("invoice charge on my account", "billing"),
           ("refund my order charge", "billing"), ("my invoice was a charge", "billing"),
           ("login password", "account"), ("my account password", "account"),
           ("login to my account", "account"), ("password login did", "account")]
QA = [("what is the capital of france", "paris is the capital of france and a city on a river", "paris"),
      ("who sat on the mat", "the cat sat on the mat", "the cat"),
      ("where did the dog sit", "the dog sat on the mat", "on the mat"),
      ("what is paris", "paris is a city", "a city")]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_tiny_project(folder: Path, backbone: Path) -> Path:
    """A project file with one task of every encoder kind, training a handful of steps each."""
    data = folder / "data"
    write_jsonl(data / "sentiment.jsonl", [{"text": t, "label": lab} for t, lab in SENTIMENT * 2])
    write_jsonl(data / "support.jsonl", [{"text": t, "label": lab} for t, lab in SUPPORT * 2])
    write_jsonl(data / "paraphrase.jsonl", [{"a": a, "b": b, "label": y} for a, b, y in PARAPHRASE * 2])
    write_jsonl(data / "similarity.jsonl",
                [{"text": a, "text_pair": b, "label": 4.5 * y + 0.2 * i} for i, (a, b, y) in enumerate(PARAPHRASE)])
    write_jsonl(data / "qa.jsonl", [{"question": q, "context": c,
                                     "answers": [{"text": a, "answer_start": c.index(a)}]} for q, c, a in QA * 2])
    training = {"epochs": 12, "batch_size": 4, "lr": 2e-2, "max_length": 32, "doc_stride": 8,
                "checkpoint_every": 3, "log_every": 1, "precision": "fp32"}
    config = {
        "backbone": str(backbone),
        "registry": "adapters",
        "reports": "reports",
        "data_dir": "data",
        "defaults": {"training": training, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "inference": {"precision": "fp32"},
        "router": {"lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                   "training": {**training, "epochs": 60, "lr": 5e-3, "checkpoint_every": 1000}},
        "tasks": [
            {"name": "sentiment", "kind": "classification",
             "data": {"train": "sentiment.jsonl", "validation": "sentiment.jsonl",
                      "labels": ["negative", "positive"]},
             "routing": {"keywords": ["movie", "film"]}},
            {"name": "support", "kind": "classification",
             "data": {"train": "support.jsonl", "validation": "support.jsonl", "labels": ["billing", "account"]},
             "routing": {"keywords": ["refund", "invoice", "password", "login", "order"]}},
            {"name": "paraphrase", "kind": "pair_classification",
             "data": {"train": "paraphrase.jsonl", "validation": "paraphrase.jsonl",
                      "fields": {"text": "a", "text_pair": "b"}, "labels": ["different", "same"]}},
            {"name": "similarity", "kind": "regression",
             "data": {"train": "similarity.jsonl", "validation": "similarity.jsonl"},
             "training": {"epochs": 30}},
            {"name": "qa", "kind": "extractive_qa",
             "data": {"train": "qa.jsonl", "validation": "qa.jsonl"},
             "training": {"max_length": 24}},
        ],
    }
    path = folder / "mtlora.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def trained_briefly(path: Path, tasks: list[str], router: bool = False) -> Path:
    """The project file at `path` cut to `tasks`, each trained a few steps (and the learned router with
    `router`): enough for tests that compare what the engine serves, not for quality."""
    import mtlora

    config = yaml.safe_load(path.read_text())
    config["tasks"] = [task for task in config["tasks"] if task["name"] in tasks]
    config["defaults"]["training"] |= {"max_steps": 3, "baseline": False}
    if router:
        config["router"] = {"training": {"max_steps": 2, "max_length": 32}}
    path.write_text(yaml.safe_dump(config))
    mtlora.train(path, progress=False, log=lambda _: None)
    if router:
        mtlora.train_router(path, progress=False, log=lambda _: None)
    return path


@pytest.fixture
def tiny_project(tmp_path: Path, tiny_bert: Path) -> Path:
    return write_tiny_project(tmp_path, tiny_bert)


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    """The tiny project with every task trained once (LoRA and head-only), shared by read-only tests."""
    import mtlora

    path = write_tiny_project(tmp_path_factory.mktemp("trained"), tiny_bert)
    mtlora.train(path, progress=False, log=lambda _: None)
    return path


def write_tiny_t5(folder: Path, tokenizer_folder: Path) -> Path:
    """A tiny random T5 with the tiny BERT's WordPiece tokenizer: the T5 code path, nothing downloaded."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    tokenizer.save_pretrained(folder)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=16, num_layers=2, num_heads=2,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    return folder


def write_tiny_bart(folder: Path, tokenizer_folder: Path) -> Path:
    """A tiny random BART with the tiny BERT's tokenizer: [CLS] starts the decoder, [SEP] ends a text.
    Its embeddings are also its output layer, so they start larger than BART's 0.02 (see `warm_start_bert`)."""
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    tokenizer.save_pretrained(folder)
    ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.cls_token_id,
           "eos_token_id": tokenizer.sep_token_id, "decoder_start_token_id": tokenizer.cls_token_id,
           "forced_eos_token_id": tokenizer.sep_token_id}
    config = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_position_embeddings=128, init_std=0.2, **ids)
    torch.manual_seed(0)
    BartForConditionalGeneration(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bart(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    return write_tiny_bart(tmp_path_factory.mktemp("tiny-bart"), tiny_bert)


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    return write_tiny_t5(tmp_path_factory.mktemp("tiny-t5"), tiny_bert)


@pytest.fixture(scope="session")
def warm_start_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT to warm-start encoder-decoders from. Its embeddings double as the frozen output layer,
    so they start larger than BERT's usual 0.02, or a few steps cannot make any token likely."""
    return write_tiny_bert(tmp_path_factory.mktemp("warm-start-bert"), initializer_range=0.2)


MCQ = [("the cat sat on the mat", "who sat on the mat", ["the cat", "the dog"], "a"),
       ("the dog sat on the mat", "who sat on the mat", ["the cat", "the dog"], "b"),
       ("paris is the capital of france", "what is the capital of france", ["paris", "a river"], "a"),
       ("the river is in the city", "where is the river", ["in paris", "in the city"], "b")]


SUMMARIES = {"positive": "great film", "negative": "bad film", "billing": "refund charge", "account": "login password"}


def write_seq2seq_project(folder: Path, backbone: Path) -> Path:
    """One task of every seq2seq kind, two of them with task tokens, training a handful of steps."""
    data = folder / "data"
    write_jsonl(data / "triage.jsonl", [{"text": t, "label": lab} for t, lab in SUPPORT * 2])
    write_jsonl(data / "summarize.jsonl",
                [{"text": t, "summary": SUMMARIES[label]} for t, label in (SENTIMENT + SUPPORT) * 2])
    write_jsonl(data / "mcq.jsonl",
                [{"passage": p, "question": q, "options": o, "answer": a} for p, q, o, a in MCQ * 2])
    training = {"epochs": 16, "batch_size": 4, "lr": 1e-2, "max_length": 32, "checkpoint_every": 3,
                "log_every": 1, "precision": "fp32"}
    config = {
        "backbone": str(backbone),
        "data_dir": "data",
        "defaults": {"training": training, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "inference": {"precision": "fp32"},
        "tasks": [
            {"name": "triage", "kind": "instruction_classification",
             "data": {"train": "triage.jsonl", "validation": "triage.jsonl", "labels": ["refund", "login"],
                      "label_map": {"billing": "refund", "account": "login"}},
             "training": {"epochs": 40},
             "seq2seq": {"prompt": "which team: {text}", "max_target_length": 4}},
            {"name": "summarize", "kind": "generation",
             "data": {"train": "summarize.jsonl", "validation": "summarize.jsonl",
                      "fields": {"target": "summary"}},
             "seq2seq": {"task_token": "<summarize>", "decoding": {"max_new_tokens": 6}}},
            {"name": "mcq", "kind": "mcq_generation",
             "data": {"train": "mcq.jsonl", "validation": "mcq.jsonl", "fields": {"text": "passage"}},
             "training": {"epochs": 80},
             "seq2seq": {"task_token": "<mcq>", "num_options": 2, "decoding": {"max_new_tokens": 24}}},
        ],
    }
    path = folder / "mtlora.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def trained_seq2seq_project(tmp_path_factory: pytest.TempPathFactory, warm_start_bert: Path) -> Path:
    """The seq2seq project trained once on an encoder-decoder warm-started from a tiny BERT."""
    import mtlora

    path = write_seq2seq_project(tmp_path_factory.mktemp("seq2seq"), warm_start_bert)
    mtlora.train(path, progress=False, log=lambda _: None)
    return path
