"""Everything checked before Ray starts: the pre-flight checks of `adaptune validate` (files, model, data,
storage, tracking server), the pure rules a trial applies to its sampled settings, search spaces, model
architectures and tokenizer files. Imports no torch, transformers, Ray or MLflow (a test holds it to that)."""
