"""Text for language models: dialogues (JSON lines) or plain text, tokenised with the
``tokenizers`` library.

``dir`` holds ``train``, ``val`` and ``test`` files, either ``<split>.jsonl`` (dialogues: one
JSON object per line with ``turns``, a list of ``{"speaker": "user" | "agent", "text": ...}``;
optional ``persona`` and ``recall``, as :mod:`kdlab.data.dialogue_corpus` writes them) or
``<split>.txt`` (plain text: lines are documents).

Tokeniser: ``tokenizer = "bpe"`` trains (once per corpus and settings: :func:`cached_bpe`) a byte-level BPE of ``vocab_size`` on the training split
(deterministic; well under a second for the generated corpus) and the run keeps it as
``tokenizer.json``; or a path to a ``tokenizer.json`` or a Hugging Face model directory holding
one. Dialogues need four special tokens (padding, user, agent, end of turn); a loaded tokeniser
that lacks them gets them added after its vocabulary.

Sequences: a dialogue is ``<|user|> text <|end|> <|agent|> text <|end|> ...``, one dialogue per
sequence of ``seq_len`` tokens, right-padded; a longer dialogue keeps its last ``seq_len + 1``
tokens (counted in the log). Plain text is packed: documents joined with ``<|end|>`` and cut
into sequences of ``seq_len``. Inputs are tokens 0..n-1, targets tokens 1..n; a target is -1
(no loss, no metric) on padding and, with ``loss_on = "responses"`` (the default for
dialogues), everywhere outside the agent's turns (its text and end-of-turn token).

For the dialogue metrics the bundle's ``extra["text"]`` holds, per split, where each dialogue's
last agent response starts (``prompt_lens``), the response's text, the recall question's fact
value, and the tokeniser: :mod:`kdlab.metrics.lm` generates and scores responses from them.

Bad lines (not JSON, no turns, an unknown speaker, empty text) are reported with file and line.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
from pathlib import Path
from typing import ClassVar, Literal

import attrs
import torch
from attrs import field
from attrs import validators as v

from kdlab.data.fingerprint import cache_root
from kdlab.data.loader import TensorLoader
from kdlab.engine import checkpoint, limits
from kdlab.data.files import read_utf8
from kdlab.engine.errors import KdlabError
from kdlab.engine.types import DataBundle

log = logging.getLogger("kdlab")
PAD, USER, AGENT, END = "<|pad|>", "<|user|>", "<|agent|>", "<|end|>"
SPECIALS = (PAD, USER, AGENT, END)
SPLITS = ("train", "val", "test")


@attrs.frozen(kw_only=True)
class TextConfig:
    # what kind of data this is: the plugins whose data_kinds meet it join a stage (kdlab.engine.plan)
    kinds: ClassVar[frozenset[str]] = frozenset({"text"})
    dir: str
    seq_len: int = field(default=192, validator=v.ge(8))
    tokenizer: str = "bpe"  # "bpe" (trained on the training split) or a tokenizer.json / HF model directory
    vocab_size: int = field(default=1024, validator=v.ge(300))  # for "bpe": 256 bytes + merges + specials
    loss_on: Literal["responses", "all"] | None = None  # None: responses for dialogues, all for plain text
    batch_size: int = field(default=32, validator=limits.batch_size)
    eval_batch_size: int = field(default=64, validator=limits.batch_size)
    train_limit: int | None = field(default=None, validator=v.optional(v.ge(1)))  # first N training sequences


@attrs.frozen(kw_only=True)
class SplitText:
    """What the dialogue metrics and sequence-level methods need beside the batches of a split."""

    inputs: torch.Tensor  # (N, seq_len) the split's input token ids (the loader's, on the CPU)
    prompt_lens: torch.Tensor  # (N,) tokens up to and including the last <|agent|> token
    responses: list[str]  # the reference text of each dialogue's last agent turn
    recall: list[str | None]  # the fact value the last response must contain, if it is a recall answer
    kinds: list[str | None]  # the recall slot (e.g. "pet_name"): hard negatives for hits@1 share it


@attrs.frozen(kw_only=True)
class TextData:
    """``DataBundle.extra["text"]``: the tokeniser and, for dialogues, each split's :class:`SplitText`."""

    tokenizer: object  # tokenizers.Tokenizer
    pad_id: int
    agent_id: int
    end_id: int
    splits: dict[str, SplitText]


def _tokenizers():
    try:
        import tokenizers
    except ImportError as exc:
        raise KdlabError("the text data set needs the 'tokenizers' package: pip install 'kdlab[text]'") from exc
    return tokenizers


def _split_file(root: Path, split: str) -> Path:
    found = [p for p in (root / f"{split}.jsonl", root / f"{split}.txt") if p.is_file()]
    if not found:
        raise KdlabError(f"data.dir = '{root}': no {split}.jsonl or {split}.txt (generate a corpus with "
                         "`kdlab data dialogues --out DIR`)")
    return found[0]


def read_dialogues(path: Path) -> list[dict]:
    """Dialogues from a JSON-lines file, each checked; a bad line stops with its file and line."""
    out = []
    for number, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KdlabError(f"{where}: not valid JSON ({exc.msg})") from None
        turns = item.get("turns") if isinstance(item, dict) else None
        if not isinstance(turns, list) or not turns:
            raise KdlabError(f"{where}: a dialogue needs a non-empty list 'turns'")
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict) or turn.get("speaker") not in ("user", "agent"):
                raise KdlabError(f"{where}: turns[{i}].speaker must be 'user' or 'agent'")
            if not isinstance(turn.get("text"), str) or not turn["text"].strip():
                raise KdlabError(f"{where}: turns[{i}].text must be a non-empty string")
        recall = item.get("recall")
        if recall is not None and not (isinstance(recall, dict) and isinstance(recall.get("value"), str)):
            raise KdlabError(f"{where}: 'recall' must be an object with a string 'value'")
        out.append(item)
    if not out:
        raise KdlabError(f"{path}: no dialogues")
    return out


def train_bpe(texts: list[str], vocab_size: int):
    """A byte-level BPE trained on ``texts`` with kdlab's special tokens first (ids 0-3)."""
    tk = _tokenizers()
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


@functools.cache
def _bpe_code() -> str:
    """The source of :func:`train_bpe` (part of the cache key), read once."""
    return inspect.getsource(train_bpe)


def cached_bpe(texts: list[str], vocab_size: int):
    """:func:`train_bpe`, trained once per corpus and settings: kept in
    ``$KDLAB_CACHE_DIR/tokenizers`` (default ``~/.cache/kdlab``) under a hash of the training
    texts, the vocabulary size, the special tokens, the tokenizers version and this module's
    training code, and read back by every later run (sweeps, seeds, resumes) instead of being
    trained again. A damaged file is trained again; a cache that cannot be written only costs
    the training next time."""
    tk = _tokenizers()
    digest = hashlib.sha256(json.dumps([vocab_size, SPECIALS, tk.__version__, _bpe_code()]).encode())
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little") + data)
    path = cache_root() / "tokenizers" / f"bpe-{digest.hexdigest()[:24]}.json"
    if path.is_file():
        try:
            return tk.Tokenizer.from_str(path.read_text(encoding="utf-8"))
        except Exception as exc:  # noqa: BLE001 - any damage: train it again
            log.warning("%s: a damaged cached tokenizer (%s); training it again", path, str(exc).splitlines()[0][:200])
    tok = train_bpe(texts, vocab_size)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.save_text(tok.to_str(), path)
    except (OSError, KdlabError) as exc:  # read-only or full: it is trained again next time
        log.warning("the trained tokenizer is not cached (%s)", exc)
    return tok


def tokenizer_difference(a, b) -> str | None:
    """None when two tokenizers turn text into the same ids (compared by content: the token -> id
    map with the added tokens, the model's merges, the normaliser and pre-tokeniser), else what
    differs, in a few words. Two tokenizers of one size can differ; that is the point."""
    va, vb = a.get_vocab(with_added_tokens=True), b.get_vocab(with_added_tokens=True)
    if va != vb:
        moved = sum(1 for t, i in va.items() if vb.get(t) != i)
        return f"{len(va):,} and {len(vb):,} tokens, {moved:,} of the first missing or at other ids in the second"
    ja, jb = json.loads(a.to_str()), json.loads(b.to_str())
    for part in ("model", "normalizer", "pre_tokenizer"):
        if ja.get(part) != jb.get(part):
            return f"the same vocabulary, another {part.replace('_', '-')}" + (" (merges)" if part == "model" else "")
    return None


def load_tokenizer(ref: str):
    """A ``tokenizer.json`` file, or the one in a Hugging Face model directory; specials added."""
    tk = _tokenizers()
    path = Path(ref)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise KdlabError(f"data.tokenizer = '{ref}': no tokenizer.json there (or use \"bpe\")")
    try:
        tok = tk.Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises its own exception type
        raise KdlabError(f"data.tokenizer = '{ref}': not a tokenizers file ({str(exc).splitlines()[0]})") from None
    missing = [s for s in SPECIALS if tok.token_to_id(s) is None]
    if missing:
        tok.add_special_tokens(missing)
    return tok


def encode_dialogue(tok, turns: list[dict], ids: dict[str, int]) -> tuple[list[int], list[bool]]:
    """Token ids of a dialogue and, per token, whether it belongs to an agent's turn (its text
    and end token: what a response loss is on)."""
    tokens, response = [], []
    for turn in turns:
        body = tok.encode(" " + turn["text"].strip(), add_special_tokens=False).ids + [ids[END]]
        agent = turn["speaker"] == "agent"
        tokens += [ids[AGENT if agent else USER], *body]
        response += [False] + [agent] * len(body)
    return tokens, response


def dialogue_tensors(tok, dialogues: list[dict], seq_len: int, responses_only: bool, where: str):
    """(inputs, targets, SplitText) for a split of dialogues (one per sequence, right-padded)."""
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    n = len(dialogues)
    inputs = torch.full((n, seq_len), ids[PAD], dtype=torch.long)
    targets = torch.full((n, seq_len), -1, dtype=torch.long)
    prompt_lens = torch.zeros(n, dtype=torch.long)
    cut = 0
    for i, d in enumerate(dialogues):
        tokens, response = encode_dialogue(tok, d["turns"], ids)
        # the last agent turn starts after its <|agent|> token
        last = max(j for j, t in enumerate(tokens) if t == ids[AGENT]) + 1 if d["turns"][-1]["speaker"] == "agent" else len(tokens)
        if len(tokens) > seq_len + 1:
            drop = len(tokens) - (seq_len + 1)
            tokens, response, last, cut = tokens[drop:], response[drop:], max(1, last - drop), cut + 1
        x, y = torch.tensor(tokens[:-1]), torch.tensor(tokens[1:])
        if responses_only:
            y = torch.where(torch.tensor(response[1:]), y, -1)
        inputs[i, : len(x)], targets[i, : len(y)] = x, y
        prompt_lens[i] = last
    if cut:
        log.info("%s: %d of %d dialogues longer than seq_len + 1 = %d tokens keep their end", where, cut, n, seq_len + 1)
    last_turns = [d["turns"][-1] for d in dialogues]
    split = SplitText(
        inputs=inputs,
        prompt_lens=prompt_lens,
        responses=[t["text"] if t["speaker"] == "agent" else "" for t in last_turns],
        recall=[(d.get("recall") or {}).get("value") for d in dialogues],
        kinds=[(d.get("recall") or {}).get("slot") for d in dialogues],
    )
    return inputs, targets, split


def packed_tensors(tok, text: str, seq_len: int, end_id: int, where: str):
    """Plain text packed into (inputs, targets) of ``seq_len`` tokens: documents (lines) joined
    with the end token; the tail shorter than a sequence is dropped."""
    stream = []
    for line in text.splitlines():
        if line.strip():
            stream += tok.encode(line.strip(), add_special_tokens=False).ids + [end_id]
    n = (len(stream) - 1) // seq_len
    if n < 1:
        raise KdlabError(f"{where}: {len(stream)} tokens, fewer than one sequence of seq_len + 1 = {seq_len + 1}")
    t = torch.tensor(stream[: n * seq_len + 1])
    return t[:-1].view(n, seq_len), t[1:].view(n, seq_len)


def build(cfg: TextConfig, seed: int) -> DataBundle:
    root = Path(cfg.dir)
    files = {split: _split_file(root, split) for split in SPLITS}
    kinds = {p.suffix for p in files.values()}
    if len(kinds) > 1:
        raise KdlabError(f"data.dir = '{root}': the splits mix .jsonl and .txt files")
    is_dialogue = kinds == {".jsonl"}
    responses_only = (cfg.loss_on or ("responses" if is_dialogue else "all")) == "responses"
    if responses_only and not is_dialogue:
        raise KdlabError("data.loss_on = 'responses' needs dialogues (.jsonl); plain text has no responses")
    raw = {s: read_dialogues(p) if is_dialogue else read_utf8(p) for s, p in files.items()}

    if cfg.tokenizer == "bpe":
        texts = ([t["text"] for d in raw["train"] for t in d["turns"]] if is_dialogue
                 else raw["train"].splitlines())
        tok = cached_bpe(texts, cfg.vocab_size)
    else:
        tok = load_tokenizer(cfg.tokenizer)
    ids = {s: tok.token_to_id(s) for s in SPECIALS}

    tensors, splits = {}, {}
    for s in SPLITS:
        where, limit = str(files[s]), cfg.train_limit if s == "train" else None
        if is_dialogue:  # one dialogue per sequence: the first `limit` dialogues
            x, y, splits[s] = dialogue_tensors(tok, raw[s][:limit], cfg.seq_len, responses_only, where)
        else:
            x, y = packed_tensors(tok, raw[s], cfg.seq_len, ids[END], where)
            x, y = x[:limit], y[:limit]
        tensors[s] = (x, y)

    def loader(s: str, train: bool) -> TensorLoader:
        x, y = tensors[s]
        return TensorLoader(x, y, cfg.batch_size if train else cfg.eval_batch_size, shuffle=train, seed=seed)

    digest = hashlib.sha256(b"".join(p.read_bytes() for p in files.values())).hexdigest()[:16]
    return DataBundle(
        train=loader("train", True),
        val=loader("val", False),
        test=loader("test", False),
        num_classes=tok.get_vocab_size(with_added_tokens=True),
        input_shape=(cfg.seq_len,),
        # every setting (seq_len, loss_on, ...) besides the files' bytes: caches keyed by it
        # (the teacher cache) must not mix sequences of another length or other targets
        key={"dataset": "text", **attrs.asdict(cfg), "files": digest, "tokenizer": hashlib.sha256(tok.to_str().encode()).hexdigest()[:16],
             "train_sizes": [len(tensors[s][0]) for s in SPLITS]},
        extra={"text": TextData(tokenizer=tok, pad_id=ids[PAD], agent_id=ids[AGENT], end_id=ids[END], splits=splits)},
    )


DATASET = (TextConfig, build)  # the `kdlab.datasets` entry point: config class, builder
