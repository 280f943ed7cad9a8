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
