"""Scoring with sacreBLEU: BLEU, chrF and TER with their signatures, of a hypothesis file or of a model's
translation of a source file."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.significance import PairedTest

from nmt.data import check_output_path, read_lines
from nmt.data.reading import with_gz
from nmt.directions import directions as trained_directions
from nmt.errors import DataError, NMTError
from nmt.files import write_lines_atomic
from nmt.translator import Translator


def score(hyps: Sequence[str], *refs: Sequence[str], where: str = "hypotheses", bootstrap: int = 0,
          baseline: Optional[Sequence[str]] = None) -> dict:
    """Corpus-level sacreBLEU scores (cased, detokenized input) and each metric's signature.

    `refs` is one reference stream per reference translation, each line-aligned with `hyps`.
    `bootstrap` > 0 adds each score's 95% confidence interval from that many bootstrap resamples of
    the sentences (`{metric}_ci`, the half-width). `baseline`, another system's hypotheses of the
    same sentences, adds a paired bootstrap test (as Moses' and sacreBLEU's: `bootstrap` resamples,
    1,000 if not given): its score and interval (`{metric}_baseline`, `{metric}_baseline_ci`) and
    `{metric}_p`, the chance of a difference at least this large if the two were equally good.
    Resampling is seeded (sacreBLEU's seed 12345, in the signature), so scores repeat exactly.
    """
    if not refs:
        raise DataError(f"{where}: no references given")
    for number, stream in enumerate(refs, start=1):
        if len(hyps) != len(stream):
            which = f" (reference set {number})" if len(refs) > 1 else ""
            raise DataError(f"{where}: {len(hyps)} hypotheses but {len(stream)} references{which}; "
                            "they must be line-aligned")
    if baseline is not None and len(baseline) != len(hyps):
        raise DataError(f"{where}: {len(hyps)} hypotheses but {len(baseline)} baseline lines; they must be line-aligned")
    if not hyps:
        raise DataError(f"{where}: nothing to score (no lines)")
    if bootstrap < 0:
        raise DataError(f"--bootstrap must be >= 0, got {bootstrap}")
    references = [list(stream) for stream in refs]
    result: dict = {"sentences": len(hyps)}
    # bleu_lc (lowercased, 13a tokenization) is stated separately so scores line up with papers that report it.
    metrics = (("bleu", BLEU()), ("chrf", CHRF()), ("ter", TER()), ("bleu_lc", BLEU(lowercase=True, tokenize="13a")))
    for name, metric in metrics:
        if not bootstrap and baseline is None:
            value = metric.corpus_score(list(hyps), references)
            result[name] = round(value.score, 2)
            result[f"{name}_signature"] = str(metric.get_signature())
            continue
        # sacreBLEU's paired test resamples the baseline (first) and the system alike; alone, the
        # system is its "baseline", and the test gives its confidence interval.
        systems = ([("baseline", list(baseline))] if baseline is not None else []) + [("system", list(hyps))]
        signatures, found = PairedTest(systems, {name: metric}, references, test_type="bs", n_samples=bootstrap)()
        (key,) = signatures  # the metric's display name, e.g. "BLEU"
        system = found[key][-1]
        result[name], result[f"{name}_ci"] = round(float(system.score), 2), round(float(system.ci), 2)  # not numpy's
        if baseline is not None:
            base = found[key][0]
            result[f"{name}_baseline"], result[f"{name}_baseline_ci"] = round(float(base.score), 2), round(float(base.ci), 2)
            result[f"{name}_p"] = round(float(system.p_value), 4)
        result[f"{name}_signature"] = str(signatures[key])
    return result


# What a program fills in or renders in a string: printf conversions (%s, %1$d, %-10s, %(name)s, %%), brace
# fields ({name}, {0}, {count:d}), markup tags (<b>, </b>, <br/>) and entities (&amp;, &#39;).
PLACEHOLDER = re.compile(
    r"%(?:\d+\$)?[-+ #0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?(?:hh|h|ll|l|L|q|j|z|t)?[diouxXeEfFgGaAcspn%]"
    r"|%\([A-Za-z_]\w*\)[-+ #0]*\d*(?:\.\d+)?[diouxXeEfFgGcrs]"
    r"|\{[A-Za-z_0-9.]*(?:[:!][^{}]*)?\}"
    r"|</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>"
    r"|&(?:[A-Za-z]+|#\d+|#x[0-9A-Fa-f]+);")


def placeholders(text: str) -> Counter:
    """The placeholders of a string, counted (their order may change in a translation, their set may not)."""
    return Counter(PLACEHOLDER.findall(text))


def placeholder_match(sources: Sequence[str], hyps: Sequence[str]) -> dict:
    """Of the sentences whose source holds placeholders, the share (percent) whose translation holds exactly the
    same ones: a fluent translation with a lost or changed `%s` breaks the program that formats it."""
    if len(sources) != len(hyps):
        raise DataError(f"{len(sources)} source lines but {len(hyps)} hypotheses; they must be line-aligned")
    with_any = [(placeholders(s), h) for s, h in zip(sources, hyps) if PLACEHOLDER.search(s)]
    kept = sum(found == placeholders(h) for found, h in with_any)
    return {"placeholders": round(100 * kept / len(with_any), 2) if with_any else None,
            "placeholder_sentences": len(with_any)}


def bleu(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """sacreBLEU corpus BLEU only (used for validation during training)."""
    return BLEU().corpus_score(list(hyps), [list(refs)]).score


def format_scores(scores: dict) -> str:
    """Human-readable lines: each score (with its 95% interval, when bootstrapped) and its signature,
    then, against a baseline, the baseline's score, the difference and its p-value."""
    names = {"bleu": "BLEU", "chrf": "chrF2", "ter": "TER", "bleu_lc": "BLEU (lowercased)"}
    lines = []
    for key, label in names.items():
        interval = f" ± {scores[key + '_ci']:5.2f}" if key + "_ci" in scores else ""
        lines.append(f"{label:17s} = {scores[key]:6.2f}{interval}  {scores[key + '_signature']}")
        if key + "_baseline" in scores:
            base = scores[key + "_baseline"]
            lines.append(f"{'':17s}   baseline {base:6.2f} ± {scores[key + '_baseline_ci']:5.2f}, difference "
                         f"{scores[key] - base:+.2f}, p = {scores[key + '_p']:.4f} (paired bootstrap)")
    if scores.get("placeholder_sentences"):
        lines.append(f"{'placeholders kept':17s} = {scores['placeholders']:6.2f}  % of the {scores['placeholder_sentences']} "
                     "sentences whose source has placeholders (%s, {name}, <b>, &amp;)")
    return "\n".join(lines)


def _ref_paths(ref_path: Path | Sequence[Path]) -> list[Path]:
    return [ref_path] if isinstance(ref_path, (str, Path)) else list(ref_path)


def evaluate_files(hyp_path: Path, ref_path: Path | Sequence[Path], bootstrap: int = 0,
                   baseline_path: Optional[Path] = None, src_path: Optional[Path] = None) -> dict:
    """Score a hypothesis file against a reference file (or several, one reference translation each);
    `bootstrap` and a baseline system's hypotheses (`baseline_path`) as in `nmt.evaluate.score`; with the
    source file (`src_path`), the placeholders kept too (`placeholder_match`)."""
    paths = _ref_paths(ref_path)
    baseline = read_lines(baseline_path) if baseline_path is not None else None
    hyps = read_lines(hyp_path)
    result = score(hyps, *map(read_lines, paths), where=f"{hyp_path} vs {', '.join(map(str, paths))}",
                   bootstrap=bootstrap, baseline=baseline)
    if src_path is not None:
        result.update(placeholder_match(read_lines(src_path), hyps))
    return result


def evaluate_model(model_dir: Path, src_path: Path, ref_path: Path | Sequence[Path], beam: Optional[int] = None,
                   device: str = "auto", output_path: Optional[Path] = None, quantize: Optional[str] = None,
                   workers: int = 1, decode: Optional[dict] = None, bootstrap: int = 0,
                   baseline_path: Optional[Path] = None, src_lang: Optional[str] = None,
                   tgt_lang: Optional[str] = None) -> dict:
    """Translate `src_path` with the model and score it against `ref_path` (or several reference files), the
    placeholders kept included; `decode`, `src_lang` and `tgt_lang` as in `translate_file`, `bootstrap`
    and `baseline_path` as in `evaluate_files`."""
    decode = decode or {}
    if bootstrap < 0:
        raise NMTError(f"--bootstrap must be >= 0, got {bootstrap}")
    src, ref_paths = read_lines(src_path), _ref_paths(ref_path)
    refs = [read_lines(path) for path in ref_paths]
    baseline = read_lines(baseline_path) if baseline_path is not None else None
    if output_path is not None:
        check_output_path(output_path)
    # Every input is checked before the translation, which is the long part.
    for path, stream in zip([*ref_paths, baseline_path], [*refs, baseline]):
        if stream is not None and len(src) != len(stream):
            raise NMTError(f"{src_path} has {len(src)} lines but {path} has {len(stream)}; they must be line-aligned")
    translator = Translator.load(model_dir, device, quantize, decode.get("precision"))
    settings = translator.settings(beam, decode)
    translator.tokenizer_for(src_lang, tgt_lang)  # an unknown language stops here, before translating
    hyps = translator.translate(src, beam=beam, show_progress=len(src) > 100, workers=workers, src_lang=src_lang,
                                tgt_lang=tgt_lang, **decode)
    if output_path is not None:
        write_lines_atomic(hyps, output_path)
    result = score(hyps, *refs, where=str(src_path), bootstrap=bootstrap, baseline=baseline)
    result.update(placeholder_match(src, hyps))
    result["beam"], result["length_penalty"] = settings.beam, settings.length_penalty
    return result


def _language_file(prefix: Path, language: str) -> Optional[Path]:
    """PREFIX.LANG or PREFIX.LANG.gz, whichever exists (as a corpus's files are found), or None."""
    path = with_gz(prefix.with_name(f"{prefix.name}.{language}"))
    return path if path.is_file() else None


def evaluate_directions(model_dir: Path, prefix: Path, directions: Sequence[str] = (), beam: Optional[int] = None,
                        device: str = "auto", workers: int = 1, decode: Optional[dict] = None,
                        output_dir: Optional[Path] = None) -> dict:
    """Every direction of a multilingual model on a multi-way test set PREFIX.{lang}[.gz] (Multi30k's
    test_2016_flickr.en, .de, ...): the trained ones (data.pairs) and the zero-shot ones between their
    languages into a language the model has a tag for, or `directions` ("de-fr"). Each row has BLEU and
    chrF with their signatures, and where lingua is installed the share of outputs a language identifier
    finds in another of the model's languages than the one asked for ("off_target")."""
    decode = decode or {}
    translator = Translator.load(model_dir, device, None, decode.get("precision"))
    pairs = trained_directions(translator.config.data)
    trained = [f"{s}-{t}" for s, t in pairs]
    languages = list(dict.fromkeys(code for pair in pairs for code in pair))
    targets = translator.tokenizer.languages() or [translator.config.data.tgt_lang]
    asked = bool(directions)
    wanted = list(directions) or trained + [f"{s}-{t}" for s in languages for t in languages
                                             if s != t and t in targets and f"{s}-{t}" not in trained]
    detector = _detector(languages)
    rows: dict[str, dict] = {}
    for pair in wanted:
        src_lang, _, tgt_lang = pair.partition("-")
        src_path, ref_path = _language_file(prefix, src_lang), _language_file(prefix, tgt_lang)
        if src_path is None or ref_path is None:
            if asked:
                raise NMTError(f"{prefix}.{src_lang if src_path is None else tgt_lang}[.gz]: not found (for {pair})")
            continue
        src, ref = read_lines(src_path), read_lines(ref_path)
        if len(src) != len(ref):
            raise NMTError(f"{src_path} has {len(src)} lines but {ref_path} has {len(ref)}; they must be line-aligned")
        hyps = translator.translate(src, beam=beam, show_progress=len(src) > 100, workers=workers,
                                    src_lang=src_lang, tgt_lang=tgt_lang, **decode)
        if output_dir is not None:
            write_lines_atomic(hyps, output_dir / f"{prefix.name}.{pair}.hyp.{tgt_lang}")
        found = score(hyps, ref, where=str(src_path))
        row = {"trained": pair in trained, "sentences": len(src), "bleu": found["bleu"], "chrf": found["chrf"]}
        if detector is not None:
            said = [detector.detect(h, top=1)[0]["language"] for h in hyps if h.strip()]
            row["off_target"] = round(100 * sum(code != tgt_lang for code in said) / max(1, len(said)), 2)
        rows[pair] = row
        signatures = {"bleu_signature": found["bleu_signature"], "chrf_signature": found["chrf_signature"]}
    if not rows:
        raise NMTError(f"{prefix}: no test files PREFIX.LANG[.gz] for any of {', '.join(wanted)}")
    result: dict = {"test": str(prefix), "beam": translator.settings(beam, decode).beam, "directions": rows}
    for kind, is_trained in (("trained", True), ("zero_shot", False)):
        scores = [row["bleu"] for row in rows.values() if row["trained"] is is_trained]
        if scores:
            result[f"mean_bleu_{kind}"] = round(sum(scores) / len(scores), 2)
    result.update(signatures)
    result["language_identifier"] = "lingua" if detector is not None else None
    return result


def _detector(languages: Sequence[str]):
    """A language identifier for `languages` (lingua, with the serve extra), or None without it."""
    from nmt.documents.detect import LanguageDetector  # lingua is optional: only the off-target share needs it

    try:
        return LanguageDetector(languages)
    except NMTError:
        return None


def format_directions(result: dict) -> str:
    """The table of `evaluate_directions`: a row per direction, then the means and the signatures."""
    off = result["language_identifier"] is not None
    lines = [f"{'direction':10s} {'kind':9s} {'BLEU':>6s} {'chrF2':>6s}" + (f" {'off-target %':>12s}" if off else "")]
    for pair, row in result["directions"].items():
        lines.append(f"{pair:10s} {'trained' if row['trained'] else 'zero-shot':9s} {row['bleu']:6.2f} {row['chrf']:6.2f}"
                     + (f" {row['off_target']:12.2f}" if off else ""))
    for kind in ("trained", "zero_shot"):
        if f"mean_bleu_{kind}" in result:
            lines.append(f"mean BLEU, {kind.replace('_', '-')}: {result[f'mean_bleu_{kind}']:.2f}")
    lines += [result["bleu_signature"], result["chrf_signature"]]
    return "\n".join(lines)
