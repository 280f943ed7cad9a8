"""Language names for language codes, as LibreTranslate's /languages and Argos packages show them."""

from __future__ import annotations

import functools


@functools.cache
def language_name(code: str) -> str:
    """The English name of an ISO 639 code ("de" -> "German"), from pycountry's ISO 639 tables;
    the code itself when it is not one (a corpus may use any code, such as "xx")."""
    try:
        import pycountry
    except ImportError:  # installed with the `serve` and `export` extras; without it, codes still work
        return code
    base = code.replace("_", "-").split("-")[0].lower()  # "pt-BR" is Portuguese
    key = {2: "alpha_2", 3: "alpha_3"}.get(len(base))
    found = pycountry.languages.get(**{key: base}) if key else None
    return found.name if found is not None else code


def match_language(code: str, known: list[str]) -> str | None:
    """The code among `known` (a model's language codes) that `code` names: itself, or the one code of
    that language in another form ("de" for NLLB's "deu_Latn" or Tatoeba's "deu", through pycountry's
    ISO 639 tables); None when there is none, or several (two scripts of one language)."""
    if code in known:
        return code
    names = {code.lower()}
    try:
        import pycountry

        found = pycountry.languages.get(alpha_2=code.lower()) if len(code) == 2 else None
        if found is not None and hasattr(found, "alpha_3"):
            names.add(found.alpha_3)
    except ImportError:
        pass
    matches = [k for k in known if k.split("_")[0].lower() in names]
    return matches[0] if len(matches) == 1 else None


def short_codes(known: list[str]) -> dict[str, str]:
    """A code for each of a model's language codes as LibreTranslate's clients name languages: ISO 639-1
    where one stands for it alone ("deu_Latn" and "deu" -> "de"), else the code itself ("zho_Hans" and
    "zho_Hant" keep theirs)."""
    try:
        import pycountry
    except ImportError:
        return {code: code for code in known}
    short: dict[str, str] = {}
    for code in known:
        base = code.split("_")[0].lower()
        found = pycountry.languages.get(alpha_3=base) if len(base) == 3 else None
        short[code] = getattr(found, "alpha_2", None) or code
    counts = {s: list(short.values()).count(s) for s in short.values()}
    return {code: s if counts[s] == 1 and (s == code or s not in known) else code for code, s in short.items()}
