"""One decoding loop per model: the sentences of all waiting requests, decoded together in token-budget batches.

Requests put their sentences on a queue (`DecodingLoop.submit`, from the event loop); a thread of
the loop's own takes the oldest waiting sentence and as many of the others (same beam and
languages, closest to it in length first) as fit one batch of `max_tokens` source tokens times the
beam, the budget by which
`nmt translate` cuts a file into batches, and decodes them with `Translator.translate_nbest`, the
call `nmt translate` makes. So many small concurrent requests are decoded in batches, as a file
is, and a request's answer is what `nmt translate` gives for its lines. Before a batch, the loop
may wait up to 20 ms for the clients that the last batch has just answered (see `DecodingLoop._take`).

Not bit for bit, and neither is `nmt translate` of a line in one file and in another: a sentence's
scores depend on its batch in the last bits (the CPU's matrix-multiply kernels round differently for
different row counts, attention over padded keys sums differently), about 1e-6 in log-probability,
so a sentence's best translation changes only where two candidates tie that closely (see the
README). With `--quantize int8` the dependence is large (on an en-de checkpoint 41-45% of the
translations change with the batch): dynamic quantization scales each activation tensor by its
largest entry, which is the batch's.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from nmt.data import padded_tokens
from nmt.documents.alignment import word_links
from nmt.decode import batch_budget
from nmt.translator import Translator

log = logging.getLogger(__name__)

Hypotheses = list[tuple[str, float]]  # (text, score), best first
LINGER = 0.02  # seconds the loop may wait for more sentences before a batch (see DecodingLoop._take)


@dataclass(eq=False)
class Job:
    """One request's sentences for one model; `future` gets their hypotheses, in order, when all are done."""

    lines: list[str]
    beam: int
    nbest: int
    future: asyncio.Future
    languages: tuple[Optional[str], Optional[str]] = (None, None)  # a tagged model's source and target
    results: list[Optional[Hypotheses]] = field(default_factory=list)
    waiting: int = 0  # sentences not decoded yet
    cancelled: bool = False  # the client went away: its sentences still queued are dropped


@dataclass(eq=False)
class _Sentence:
    job: Job
    index: int  # line number in job.lines
    length: int  # source tokens with EOS, as decoding counts them


class DecodingLoop:
    """A queue of sentences and the thread that decodes them for one `Translator`.

    `max_tokens` is the source-token budget of a batch (times the beam), as `decode.max_tokens`;
    None takes the model's own setting (its 0: the device's default, as in `nmt translate`).
    """

    def __init__(self, translator: Translator, max_tokens: Optional[int] = None, name: str = "decode") -> None:
        self.translator = translator
        self.max_tokens = max_tokens or batch_budget(translator.config.decode.max_tokens, translator.device)
        self.max_source = translator.config.model.max_positions - 1  # longer inputs are truncated
        self._queue: deque[_Sentence] = deque()
        self._alignments: deque[tuple[list[tuple[str, str]], tuple, asyncio.Future]] = deque()  # see `align`
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.batches = 0  # decoded so far, for the logs and tests
        self.sentences = 0
        self._last_seconds = 0.0  # the last batch's decoding time
        self._expected = 0  # requests expected to wait before the next batch (see _take)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Decode what is queued, then end the thread (after the server has answered its requests)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    @property
    def pending(self) -> int:
        """Sentences queued and not decoding yet (those of cancelled jobs not counted)."""
        with self._wake:
            return sum(not sentence.job.cancelled for sentence in self._queue)

    def submit(self, lines: Sequence[str], beam: int, nbest: int,
               languages: tuple[Optional[str], Optional[str]] = (None, None)) -> Job:
        """Queue a request's lines (from the event loop's thread); await `job.future` for the hypotheses.

        Empty lines are answered at once with one empty hypothesis, as `nmt translate` answers them.
        `languages` choose a tagged model's source and target (`Translator.tokenizer_for`).
        """
        job = Job(list(lines), beam, nbest, asyncio.get_running_loop().create_future(), languages)
        job.results = [None if line.strip() else [("", 0.0)] for line in job.lines]
        todo = [i for i, line in enumerate(job.lines) if line.strip()]
        if not todo:
            job.future.set_result(job.results)
            return job
        lengths = [min(len(ids), self.max_source) + 1
                   for ids in self.translator.tokenizer_for(*languages).encode_src([job.lines[i].strip() for i in todo])]
        job.waiting = len(todo)
        with self._wake:
            self._queue.extend(_Sentence(job, i, n) for i, n in zip(todo, lengths))
            self._wake.notify()
        return job

    def align(self, pairs: list[tuple[str, str]], languages: tuple[Optional[str], Optional[str]] = (None, None)
              ) -> asyncio.Future:
        """Word links of (sentence, translation) pairs (`nmt.documents.alignment.word_links`), from the event
        loop's thread; await the future. They are made on the loop's thread before its next batch, since
        they run the same model (and cores) as decoding, with the pairs of every request waiting for
        links in one call, as sentences are batched."""
        future = asyncio.get_running_loop().create_future()
        with self._wake:
            self._alignments.append((list(pairs), languages, future))
            self._wake.notify()
        return future

    def _run_alignments(self) -> None:
        with self._wake:
            calls, self._alignments = list(self._alignments), deque()
        for languages in dict.fromkeys(call[1] for call in calls):
            mine = [call for call in calls if call[1] == languages]
            try:
                found, failure = word_links(self.translator, [p for pairs, _, _ in mine for p in pairs], *languages), None
            except Exception as exc:  # noqa: BLE001 - handed to the requests that asked
                found, failure = [], exc
            position = 0
            for pairs, _, future in mine:
                result = found[position:position + len(pairs)]
                position += len(pairs)
                future.get_loop().call_soon_threadsafe(_settle, future, result, failure)

    def cancel(self, job: Job) -> None:
        """Forget a job whose client has gone: its queued sentences are dropped, not decoded."""
        with self._wake:
            job.cancelled = True

    def _take(self) -> Optional[list[_Sentence]]:
        """The next batch (see the module's docstring); None once stopping with nothing left.

        While the budget has room, the loop lingers for the clients that the last batch answered and
        that are sending their next request: until the requests waiting are as many as were waiting
        when the last batch ended plus those it answered, for at most `LINGER` seconds and a tenth of
        the last batch's time. Without it, concurrent clients split into two groups whose batches
        alternate. One client at a time never waits (it is the one expected); a client that does not
        come back costs that wait once.
        """
        with self._wake:
            deadline: Optional[float] = None
            while True:
                while self._queue and self._queue[0].job.cancelled:
                    self._queue.popleft()
                if self._alignments:
                    return []  # the alignments first (see `_run`)
                if not self._queue:
                    if self._stopping:
                        return None
                    self._wake.wait()
                    deadline = None
                    continue
                if deadline is None:
                    deadline = time.monotonic() + min(LINGER, self._last_seconds / 10)
                taken, kept, full = self._select()
                left = deadline - time.monotonic()
                waiting = len({sentence.job for sentence in self._queue if not sentence.job.cancelled})
                if full or waiting >= self._expected or self._stopping or left <= 0:
                    self._queue = kept
                    return taken
                self._wake.wait(left)

    def _select(self) -> tuple[list[_Sentence], deque[_Sentence], bool]:
        """The oldest sentence and, of the others with its beam and languages, those closest to it in length
        that fit the budget; the rest, in their order; whether one was left out for want of room.

        Closest in length, not first come: a batch of like lengths pads less and stops sooner (the search
        runs until its longest hypothesis ends), and more short sentences fit the budget, as in `nmt
        translate`, which sorts a file by length. The oldest sentence is in every batch, so none waits
        for ever. (On 32 clients sending paragraphs: see bench/README.md.)
        """
        first = self._queue[0]  # `_take` has dropped the cancelled ones at the head
        # One beam per batch, and one forced output start: the directions of a model whose target tag is in
        # the source go together.
        beam, key = first.job.beam, self.translator.batch_key(*first.job.languages)
        alike = [i for i, sentence in enumerate(self._queue) if not sentence.job.cancelled
                 and sentence.job.beam == beam and self.translator.batch_key(*sentence.job.languages) == key]
        chosen: set[int] = set()
        longest, full = 0, False
        for i in sorted(alike, key=lambda i: (abs(self._queue[i].length - first.length), i)):
            length = self._queue[i].length
            # The budget as `translate_ids` cuts a file: beam rows per sentence, each as long as the longest.
            if padded_tokens((len(chosen) + 1) * beam, max(longest, length)) <= self.max_tokens or not chosen:
                chosen.add(i)
                longest = max(longest, length)
            else:
                full = True
        taken = [self._queue[i] for i in sorted(chosen)]
        kept = deque(sentence for i, sentence in enumerate(self._queue) if i not in chosen and not sentence.job.cancelled)
        return taken, kept, full

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            self._run_alignments()
            if not batch:
                continue
            started = time.perf_counter()
            try:  # n-best only cuts a sentence's finished hypotheses; the search is the beam's alone
                found = self.translator.translate_mixed([s.job.lines[s.index] for s in batch],
                                                        [s.job.languages for s in batch],
                                                        max(s.job.nbest for s in batch), beam=batch[0].job.beam,
                                                        max_tokens=self.max_tokens)
            except Exception as exc:  # noqa: BLE001 - a failed batch fails its requests, not the server
                log.exception("decoding a batch of %d sentences failed", len(batch))
                for job in {s.job for s in batch}:
                    job.cancelled = True  # its other sentences need not be decoded either
                    job.future.get_loop().call_soon_threadsafe(_fail, job, exc)
                continue
            self.batches += 1
            self.sentences += len(batch)
            self._last_seconds = time.perf_counter() - started
            log.debug("decoded %d sentences in %.1f ms", len(batch), 1000 * (time.perf_counter() - started))
            answered = 0
            for sentence, hyps in zip(batch, found):
                job = sentence.job
                job.results[sentence.index] = hyps[:job.nbest]
                job.waiting -= 1
                if job.waiting == 0 and not job.cancelled:
                    job.future.get_loop().call_soon_threadsafe(_finish, job)
                    answered += 1
            with self._wake:
                self._expected = answered + len({s.job for s in self._queue if not s.job.cancelled})


def _finish(job: Job) -> None:
    if not job.future.done():
        job.future.set_result(job.results)


def _settle(future: asyncio.Future, result: Any, failure: Optional[Exception]) -> None:
    if future.done():
        return
    if failure is not None:
        future.set_exception(failure)
    else:
        future.set_result(result)


def _fail(job: Job, exc: Exception) -> None:
    if not job.future.done():
        job.future.set_exception(exc)
