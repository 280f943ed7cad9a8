"""Which language a text is in, among the languages a server translates from (lingua: its models ship
inside the wheel, nothing is downloaded; built for just those languages, which keeps it small and
the answers within what can be translated)."""

from __future__ import annotations

from typing import Sequence

from nmt.errors import NMTError


class LanguageDetector:
    """`detect(text)` -> candidates [{"language": code, "confidence": 0-100}], best first, as LibreTranslate's
    /detect answers; `codes` are the server's source codes (ISO 639-1 or 639-3: "en", "deu")."""

    def __init__(self, codes: Sequence[str]) -> None:
        try:
            from lingua import IsoCode639_1, IsoCode639_3, Language, LanguageDetectorBuilder
        except ImportError:
            raise NMTError("language detection needs lingua: pip install 'nmt[serve]'") from None
        self._by_language: dict[object, str] = {}
        for code in codes:
            bare = code.strip("<>").split("_")[0].lower()
            try:
                iso = IsoCode639_1.from_str(bare) if len(bare) == 2 else IsoCode639_3.from_str(bare)
                language = (Language.from_iso_code_639_1(iso) if len(bare) == 2
                            else Language.from_iso_code_639_3(iso))
            except ValueError:
                continue  # a language lingua does not know is never detected (it can still be named)
            self._by_language.setdefault(language, code)
        self.codes = sorted(set(self._by_language.values()))
        languages = list(self._by_language)
        if len(languages) >= 2:
            self._detector = LanguageDetectorBuilder.from_languages(*languages).with_preloaded_language_models().build()
        else:
            self._detector = None  # one language or none: nothing to tell apart

    def detect(self, text: str, top: int = 3) -> list[dict]:
        if self._detector is None or not text.strip():
            return [{"language": self.codes[0] if self.codes else "en", "confidence": 100.0 if self.codes else 0.0}]
        found = self._detector.compute_language_confidence_values(text)
        return [{"language": self._by_language[value.language], "confidence": round(100 * value.value, 1)}
                for value in found[:top]]

    def detect_all(self, texts: Sequence[str], top: int = 3) -> list[dict]:
        """One list of candidates for several texts, each language's confidence averaged with the texts'
        lengths as weights (as LibreTranslate answers a list)."""
        totals: dict[str, float] = {}
        weight = sum(max(1, len(text)) for text in texts)
        for text in texts:
            for candidate in self.detect(text, top=len(self.codes) or 1):
                totals[candidate["language"]] = totals.get(candidate["language"], 0.0) + \
                    candidate["confidence"] * max(1, len(text)) / weight
        ranked = sorted(totals.items(), key=lambda item: -item[1])[:top]
        return [{"language": code, "confidence": round(value, 1)} for code, value in ranked]
