"""Parallel corpora, from files to training batches.

    reading.py    corpora of every form read in bounded chunks; whole small files
    cleaning.py   stripping, empty sides, duplicates, length filters; the tokenizer's sentence sample
    store.py      token ids in a memory-mapped Arrow file
    prepare.py    corpora -> cleaned text -> token stores, in parallel, cached
    batching.py   each epoch's token-budget batches (numpy) and the model inputs of a batch
"""

from nmt.data.batching import (EpochBatches, TrainingData, collate, epoch_batches, make_batches, model_inputs, pad,
                                padded_tokens, rows_within)
from nmt.data.cleaning import CleanStats, SentenceSample
from nmt.data.prepare import Preparation, cache_root, prepare_corpora, sample_corpus, token_pairs
from nmt.data.reading import CorpusSource, LineBlocks, check_output_path, open_corpus, read_corpus, read_lines
from nmt.data.store import TokenStore

__all__ = ["CleanStats", "CorpusSource", "EpochBatches", "LineBlocks", "Preparation", "SentenceSample", "TokenStore",
           "TrainingData", "cache_root", "check_output_path", "collate", "epoch_batches", "make_batches",
           "model_inputs", "open_corpus", "pad", "padded_tokens", "prepare_corpora", "read_corpus", "read_lines",
           "rows_within", "sample_corpus", "token_pairs"]
