"""Parallel corpora: reading (text pairs, TSV, JSONL, `datasets`), cleaning, cached tokenization, token batches."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from nmt.config import DataConfig
from nmt.errors import DataError
from nmt.tokenizer import EOS_ID, PAD_ID, Tokenizer

log = logging.getLogger(__name__)


def read_lines(path: str | Path) -> list[str]:
    """Read a UTF-8 text file (optionally .gz) into lines; a BOM and CRLF endings are accepted.

    Raises DataError naming the file (and line, for invalid UTF-8) on any problem.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a text file")
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read ({exc}); check the file's permissions and format") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: invalid UTF-8 (byte offset {exc.start}); convert the file to UTF-8") from None
    if not text:
        return []
    if text.endswith("\n"):
        text = text[:-1]  # a final newline ends the last line; it does not start another
    # Split on "\n" only: str.splitlines would also split on \x0b, \x1c, U+2028 ... and break alignment.
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def check_output_path(path: str | Path) -> Path:
    """Raise DataError unless `path` can be written as a file; checked before any long work starts."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a file name")
    parent = path.parent
    if not parent.is_dir():
        raise DataError(f"{path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(f"{path}: cannot write in {parent} (permission denied)")
    return path


def _with_gz(path: Path) -> Path:
    gz = path.with_name(path.name + ".gz")
    return gz if not path.exists() and gz.exists() else path


def _read_jsonl(path: Path, src_lang: str, tgt_lang: str) -> tuple[list[str], list[str]]:
    src, tgt = [], []
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            pair = record.get("translation", record)
            if "src" in pair:
                src.append(pair["src"]), tgt.append(pair["tgt"])
            else:
                src.append(pair[src_lang]), tgt.append(pair[tgt_lang])
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise DataError(f"{path}:{number}: expected a JSON object with src/tgt or "
                            f"translation.{src_lang}/translation.{tgt_lang} strings") from None
    return src, tgt


def _read_tsv(path: Path) -> tuple[list[str], list[str]]:
    src, tgt = [], []
    for number, line in enumerate(read_lines(path), start=1):
        columns = line.split("\t")
        if len(columns) != 2:
            raise DataError(f"{path}:{number}: expected 2 tab-separated columns, found {len(columns)}")
        src.append(columns[0]), tgt.append(columns[1])
    return src, tgt


def _read_dataset(dataset: Any, where: str, src_lang: str, tgt_lang: str) -> tuple[list[str], list[str]]:
    columns = dataset.column_names
    if "translation" in columns:
        rows = dataset["translation"]
        missing = {src_lang, tgt_lang} - set(rows[0] if rows else {})
        if missing:
            raise DataError(f"{where}: translation column has no language {sorted(missing)}; languages: {sorted(rows[0])}")
        return [r[src_lang] for r in rows], [r[tgt_lang] for r in rows]
    if src_lang in columns and tgt_lang in columns:
        return list(dataset[src_lang]), list(dataset[tgt_lang])
    if "src" in columns and "tgt" in columns:
        return list(dataset["src"]), list(dataset["tgt"])
    raise DataError(f"{where}: no 'translation' column and no '{src_lang}'/'{tgt_lang}' columns (found {columns})")


def _pick_split(dataset: Any, split: str, where: str) -> Any:
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise DataError(f"{where}: no split '{split}' (splits: {', '.join(dataset)})")
        return dataset[split]
    return dataset


def read_corpus(spec: str, src_lang: str, tgt_lang: str, split: str = "train",
                hub_config: str = "") -> tuple[list[str], list[str]]:
    """Read a parallel corpus given as a file prefix, .tsv, .jsonl, saved dataset dir or hub:NAME."""
    if spec.startswith("hub:"):
        from nmt.hub import load_hub_dataset  # one DataError line for any hub failure, no retry loop offline

        return _read_dataset(load_hub_dataset(spec[4:], hub_config, split), spec, src_lang, tgt_lang)
    path = Path(spec)
    if path.is_dir():
        import datasets

        try:
            dataset = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as exc:
            raise DataError(f"{path}: not a dataset saved with save_to_disk ({exc})") from None
        return _read_dataset(_pick_split(dataset, split, str(path)), str(path), src_lang, tgt_lang)
    name = path.name.removesuffix(".gz")
    if name.endswith(".tsv"):
        return _read_tsv(path)
    if name.endswith(".jsonl") or name.endswith(".json"):
        return _read_jsonl(path, src_lang, tgt_lang)
    src_path = _with_gz(path.with_name(f"{path.name}.{src_lang}"))
    tgt_path = _with_gz(path.with_name(f"{path.name}.{tgt_lang}"))
    if not src_path.exists() and not path.exists():
        raise DataError(f"{spec}: corpus not found (looked for {src_path} and {tgt_path}, a .tsv/.jsonl file or a dataset dir)")
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; parallel files must be line-aligned")
    return src, tgt


@dataclass
class CleanStats:
    """How many pairs each cleaning rule removed."""

    read: int = 0
    empty: int = 0
    duplicate: int = 0
    too_long: int = 0
    bad_ratio: int = 0
    kept: int = 0

    def summary(self) -> str:
        return (f"read {self.read} pairs, kept {self.kept}: dropped {self.empty} with an empty side, "
                f"{self.duplicate} duplicates, {self.too_long} too long, {self.bad_ratio} with a bad length ratio")


def clean_text_pairs(src: Sequence[str], tgt: Sequence[str], dedup: bool, stats: CleanStats) -> tuple[list[str], list[str]]:
    """Strip whitespace; drop pairs with an empty side and (optionally) exact duplicates."""
    seen: set[tuple[str, str]] = set()
    out_src, out_tgt = [], []
    for s, t in zip(src, tgt):
        s, t = s.strip(), t.strip()
        if not s or not t:
            stats.empty += 1
            continue
        if dedup:
            if (s, t) in seen:
                stats.duplicate += 1
                continue
            seen.add((s, t))
        out_src.append(s), out_tgt.append(t)
    return out_src, out_tgt


def require_pairs(src: Sequence[str], tgt: Sequence[str], where: str) -> None:
    """Fail early (before a tokenizer is trained) when no pair has two non-empty sides."""
    if not any(s.strip() and t.strip() for s, t in zip(src, tgt)):
        raise DataError(f"{where}: no training pairs left after cleaning (read {len(src)} pairs, each has an empty side)")


def _fingerprint(src: Sequence[str], tgt: Sequence[str], tokenizer: Tokenizer, config: DataConfig) -> str:
    digest = hashlib.sha256()
    for part in ("\n".join(src), "\n".join(tgt)):
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    for file in tokenizer.files:
        digest.update(file.read_bytes())
    digest.update(f"{config.max_tokens_per_side}|{config.max_length_ratio}|{config.dedup}".encode())
    return digest.hexdigest()[:24]


def cache_root(config: DataConfig) -> Path:
    return Path(config.cache_dir or os.environ.get("NMT_CACHE") or Path.home() / ".cache" / "nmt")


@dataclass
class TokenizedCorpus:
    """Token ids of a cleaned training corpus (no special tokens)."""

    src: list[list[int]]
    tgt: list[list[int]]
    stats: CleanStats


def tokenize_corpus(src: Sequence[str], tgt: Sequence[str], tokenizer: Tokenizer, config: DataConfig,
                    where: str) -> TokenizedCorpus:
    """Clean and tokenize a training corpus, reusing an Arrow cache keyed by corpus, tokenizer and filters."""
    import datasets

    datasets.disable_progress_bars()  # our own logs say what happened; Arrow's bars would only add noise
    key = _fingerprint(src, tgt, tokenizer, config)
    cache = cache_root(config) / "tokenized" / key
    if (cache / "stats.json").is_file():
        dataset = datasets.load_from_disk(str(cache / "data"))
        stats = CleanStats(**json.loads((cache / "stats.json").read_text()))
        log.info("%s: tokenized data from cache %s", where, cache)
        return TokenizedCorpus(dataset["src_ids"], dataset["tgt_ids"], stats)
    log.info("%s: cleaning and tokenizing %s pairs (cached for later runs)", where, f"{len(src):,}")
    stats = CleanStats(read=len(src))
    src, tgt = clean_text_pairs(src, tgt, config.dedup, stats)
    src_ids, tgt_ids = tokenizer.encode_src(src), tokenizer.encode_tgt(tgt)
    keep_src, keep_tgt = [], []
    for s, t in zip(src_ids, tgt_ids):
        if len(s) > config.max_tokens_per_side or len(t) > config.max_tokens_per_side:
            stats.too_long += 1
        elif max(len(s), len(t)) > config.max_length_ratio * max(1, min(len(s), len(t))):
            stats.bad_ratio += 1
        else:
            keep_src.append(s), keep_tgt.append(t)
    stats.kept = len(keep_src)
    if not keep_src:
        raise DataError(f"{where}: no training pairs left after cleaning ({stats.summary()})")
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    datasets.Dataset.from_dict({"src_ids": keep_src, "tgt_ids": keep_tgt}).save_to_disk(str(tmp / "data"))
    (tmp / "stats.json").write_text(json.dumps(stats.__dict__))
    try:
        tmp.rename(cache)
    except OSError:  # another process filled the cache first; ours is identical
        pass
    return TokenizedCorpus(keep_src, keep_tgt, stats)


def make_batches(src_lengths: Sequence[int], tgt_lengths: Sequence[int], max_tokens: int,
                 seed: int, epoch: int) -> list[list[int]]:
    """Group example indices into batches of at most `max_tokens` padded tokens (source + target).

    Examples are sorted by length (random tie-break) so a batch holds similar lengths and
    little padding; the batch order is then shuffled. The sort key is the longer side first, then
    source, then target length: sorted by source length alone, a batch that straddles two source
    lengths runs from the longest targets of one to the shortest of the next (on Multi30k 11% of
    target positions were padding; with this key 4%). The result depends only on
    (lengths, max_tokens, seed, epoch), which is what makes resuming at a batch index exact.
    """
    rng = random.Random(seed * 100_003 + epoch)
    keys = [(max(s, t), s, t, rng.random(), i) for i, (s, t) in enumerate(zip(src_lengths, tgt_lengths))]
    keys.sort()
    batches: list[list[int]] = []
    batch: list[int] = []
    longest_src = longest_tgt = 0
    for _, s, t, _, index in keys:
        s, t = s + 1, t + 1  # EOS on the source, BOS/EOS shift on the target
        new_src, new_tgt = max(longest_src, s), max(longest_tgt, t)
        if batch and (len(batch) + 1) * (new_src + new_tgt) > max_tokens:
            batches.append(batch)
            batch, new_src, new_tgt = [], s, t
        batch.append(index)
        longest_src, longest_tgt = new_src, new_tgt
    if batch:
        batches.append(batch)
    rng.shuffle(batches)
    return batches


def pad(sequences: Sequence[Sequence[int]], value: int = PAD_ID) -> torch.Tensor:
    """Right-pad integer sequences into a (B, L) long tensor."""
    longest = max(len(s) for s in sequences)
    out = torch.full((len(sequences), longest), value, dtype=torch.long)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return out


def collate(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], start_id: int) -> dict[str, torch.Tensor]:
    """Build model inputs: source + EOS, target input start + y, target output y + EOS (all padded).

    `start_id` is the model's first decoder input (`Transformer.start_id`). "targets" holds the flat
    positions of the non-padding entries of tgt_out, so training can pick them on any device without
    a boolean mask (whose size a GPU would have to report back to the host).
    """
    tgt_out = pad([list(t) + [EOS_ID] for t in tgt])
    return {
        "src": pad([list(s) + [EOS_ID] for s in src]),
        "tgt_in": pad([[start_id] + list(t) for t in tgt]),
        "tgt_out": tgt_out,
        "targets": (tgt_out.view(-1) != PAD_ID).nonzero().view(-1),
    }
