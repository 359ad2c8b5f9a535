"""The offline demo: a tiny model with a tokenizer trained on local text, and company FAQ rows generated from a
fact table kept as data (`facts.json`)."""
