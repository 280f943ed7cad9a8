"""Models trained elsewhere, imported: a Hugging Face MarianMT (OPUS-MT) or M2M100 / NLLB-200 directory, or a
hub name, into an ordinary nmt run directory that every nmt command takes.

    source.py   a Hugging Face model directory: config.json, tokenizer files, weights read one at a time
    convert.py  what every import shares: the result, nmt's special ids first, the layers under nmt's names
    marian.py   MarianMT in nmt's terms;  m2m100.py  M2M100 and NLLB-200 in nmt's terms
    names.py    nmt's parameter names and Hugging Face's (the exporter uses them too)
    run.py      the run directory `nmt import` writes, and the model `model.init` starts training from
"""
