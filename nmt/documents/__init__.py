"""Translating text as people send it: paragraphs cut into sentences (sentences.py), inline markup carried
across a translation by word alignment (markup.py, alignment.py), HTML (html.py), office files
(office.py), whole documents through a translate function (translate.py) and language identification
(detect.py). Everything here sits on top of `nmt.translator`; serving and `nmt translate` use it.
"""
