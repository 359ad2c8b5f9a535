"""Every check a real run makes before spending compute, without starting Ray or importing torch: files and
model exist, the head of the data parses, target modules exist, trials fit the cluster, settings combine."""

from __future__ import annotations

import glob
import importlib.util
import os
import re
from pathlib import Path

from adaptune.config import ClusterProfile, SweepConfig, resolve_path
from adaptune.data import (
    FALLBACK_CHAT_TEMPLATE,
    chat_segments,
    find_data_files,
    find_overlap,
    load_records,
    load_splits,
    prompt_key,
    split_indices,
)
from adaptune.errors import DataError, Problem, missing_path_hint
from adaptune.evaluation import check_scorers
from adaptune.names import TOKENIZER_FILES
from adaptune.preflight.architecture import (
    ArchitectureError,
    ambiguous_targets,
    custom_code,
    linear_layer_shapes,
    linear_layers,
    matched_layers,
    read_model_type,
    resolve_target_modules,
)
from adaptune.preflight.rules import check_compatibility, check_space_compatibility
from adaptune.preflight.search_space import check_search, finite_values, target_candidates
from adaptune.preflight.tokenizer_files import read_tokenizer_files, tokenizer_problems
from adaptune.records import REPORTED_METRICS, TAKEN_NAMES
from adaptune.tracking.server import check_tracking  # the server is asked over HTTP: no MLflow import

HEAD_ROWS = 100


def local_gpu_count() -> int:
    """GPUs on this machine, without importing torch: CUDA_VISIBLE_DEVICES, else /dev/nvidiaN devices."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    return len(glob.glob("/dev/nvidia[0-9]*"))


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or resolve_path(path).exists() or path.count("/") != 1


def check_model(sweep: SweepConfig, source: str) -> list[Problem]:
    """The model directory exists with config, weights and tokenizer, and the LoRA targets exist in it."""
    path = sweep.model.path
    local = resolve_path(path)
    if not local.exists():
        if _looks_local(path):
            return [
                Problem(
                    source,
                    "model.path",
                    f"model directory {path!r} does not exist",
                    missing_path_hint(path) + " (the demo model is built by `adaptune demo-model`)",
                )
            ]
        return check_remote_code(sweep, source, None) + _check_hub_model(sweep, source)
    if not local.is_dir():
        return [Problem(source, "model.path", f"{path!r} is a file, not a model directory", "Point at the directory")]
    problems = []
    if not any((local / f).is_file() for f in TOKENIZER_FILES):
        problems.append(
            Problem(
                source,
                "model.path",
                f"no tokenizer in {path}",
                f"Save the tokenizer there (one of {', '.join(TOKENIZER_FILES)})",
            )
        )
    problems += check_remote_code(sweep, source, local)
    problems += tokenizer_problems(source, local)
    try:
        model_type, shapes = read_model_type(local), linear_layer_shapes(local)
    except ArchitectureError as e:
        return [*problems, Problem(source, "model.path", str(e), "Point at a saved Hugging Face model")]
    layers = sorted(shapes)
    ranks = [("lora.r", sweep.lora.r)] + [
        ("search.space.lora.r", r) for r in finite_values(sweep.search.space, "lora.r") or [] if isinstance(r, int)
    ]
    for i, target in enumerate(target_candidates(sweep)):
        key = "lora.target_modules" if i == 0 else "search.space.lora.target_modules"
        try:
            targets = resolve_target_modules(target, model_type, layers)
        except ArchitectureError as e:
            problems.append(Problem(source, key, str(e), "Pick modules from that list"))
            continue
        problems += _rank_problems(source, ranks, matched_layers(targets, layers), shapes, target)
        if isinstance(target, list):
            for name, kinds in ambiguous_targets(targets, layers).items():
                problems.append(
                    Problem(
                        source,
                        key,
                        f"{name!r} matches layers of {len(kinds)} kinds ({', '.join(kinds)}): all of them are adapted",
                        f"Write {' or '.join(repr(k) for k in kinds)} to adapt only one kind",
                        warning=True,
                    )
                )
    return problems


def _attentions(sweep: SweepConfig) -> set[str]:
    """The attention implementations a run may use: `train.attention` and its searched values."""
    return {sweep.train.attention, *(finite_values(sweep.search.space, "train.attention") or [])}


def check_attention(sweep: SweepConfig, source: str) -> list[Problem]:
    """flash_attention_2 (as `train.attention` or a searched value) needs the flash-attn package: a warning
    where it is not installed, since the GPU workers may have it where this runs does not. (Whether the model
    has the implementation is `attention_problems`', asked where transformers is imported anyway.)"""
    if "flash_attention_2" not in _attentions(sweep) or importlib.util.find_spec("flash_attn") is not None:
        return []
    return [
        Problem(
            source,
            "train.attention",
            "flash_attention_2 needs the flash-attn package, which is not installed here",
            "Install flash-attn on the GPU nodes (pip install flash-attn), or use train.attention=sdpa",
            warning=True,
        )
    ]


ATTENTION_FLAGS = {"sdpa": "_supports_sdpa", "flash_attention_2": "_supports_flash_attn"}  # transformers' own


def attention_problems(sweep: SweepConfig, source: str) -> list[Problem]:
    """The attention implementations asked for (`train.attention` and its searched values) exist for the
    model's class in the installed transformers (imports it: the run asks this before any trial starts)."""
    wanted = _attentions(sweep) & set(ATTENTION_FLAGS)
    try:
        model_type = read_model_type(resolve_path(sweep.model.path))
    except ArchitectureError:
        return []  # a hub model, or one check_model already refused
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    model_class = getattr(transformers, name, None) if isinstance(name, str) else None
    return [
        Problem(
            source,
            "train.attention",
            f"{name} ({model_type}) has no {attention} attention in transformers {transformers.__version__}",
            "Use train.attention=eager" + ("" if attention == "sdpa" else " or sdpa"),
        )
        for attention in sorted(wanted)
        if model_class is not None and not getattr(model_class, ATTENTION_FLAGS[attention], False)
    ]


def _rank_problems(
    source: str, ranks: list[tuple[str, int]], matched: list[str], shapes: dict[str, list[int]], target: object
) -> list[Problem]:
    """A LoRA rank above min(in, out) of an adapted layer cannot be reached by B @ A (rank <= min(d, k)): the
    extra parameters only cost memory and make alpha/r scale the update down for nothing."""
    if not matched:
        return []
    smallest = min(matched, key=lambda m: min(shapes[m]))
    limit = min(shapes[smallest])
    shape = "x".join(map(str, shapes[smallest]))
    return [
        Problem(
            source,
            key,
            f"rank {r} is above min(in, out) = {limit} of the adapted layer {smallest} ({shape}; target_modules "
            f"{target}): a LoRA update B @ A cannot have a higher rank, the extra parameters would be wasted",
            f"Use lora.r <= {limit}, or adapt larger layers",
        )
        for key, r in dict.fromkeys(ranks)
        if r > limit
    ]


def check_remote_code(sweep: SweepConfig, source: str, local: Path | None) -> list[Problem]:
    """Code shipped with a model runs only when `model.trust_remote_code` names that model: a local model whose
    code transformers would need is refused without it (nothing is run to find out), and a hub model's code is
    run only from a pinned commit, never from a branch its owners can move."""
    m = sweep.model
    if local is None:
        if m.trust_remote_code and not re.fullmatch(r"[0-9a-f]{40}", m.revision or ""):
            return [
                Problem(
                    source,
                    "model.revision",
                    f"model.trust_remote_code runs the Python code of hub model {m.path!r} from revision "
                    f"{m.revision or 'main'!r}, which its owners can change under you (a supply-chain risk)",
                    "Pin model.revision to a full commit hash (40 hex characters, from the model's history) after "
                    "reading that commit's code, or download and review the model and point model.path at it",
                )
            ]
        return []
    shipped = custom_code(local)
    if m.trust_remote_code or not shipped:
        return []
    from adaptune.worker.model import remote_code_refusal  # imports transformers; only models that ship code get here

    part = remote_code_refusal(str(local))
    if part is None:
        return []  # transformers has built-in classes for it; the shipped code is never imported
    return [
        Problem(
            source,
            "model.trust_remote_code",
            f"{m.path} loads only by running Python code it ships (transformers has no {part} class of its own "
            f"for it; the model names {', '.join(shipped)}), and model.trust_remote_code is false",
            "Read that code; set model.trust_remote_code: true for this model only if you trust its authors, "
            "or use a model transformers supports natively",
        )
    ]


def _check_hub_model(sweep: SweepConfig, source: str) -> list[Problem]:
    """A hub id: usable when it is in the local cache, or when the hub may be reached."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(sweep.model.path, "config.json", revision=sweep.model.revision)
    if isinstance(cached, str):
        try:
            d = Path(cached).parent
            resolve_target_modules(sweep.lora.target_modules, read_model_type(d), linear_layers(d))
        except ArchitectureError as e:
            return [Problem(source, "lora.target_modules", str(e), "Pick modules from that list")]
        return []
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return [
            Problem(
                source,
                "model.path",
                f"hub model {sweep.model.path!r} is not in the local cache and HF_HUB_OFFLINE=1",
                "Download it first, or point model.path at a local directory",
            )
        ]
    return []  # fetched from the hub when the run starts; its architecture is checked then


def check_data(sweep: SweepConfig, source: str) -> list[Problem]:
    """Each data path names files, the head of each file has the configured format and columns, and no
    validation or test row asks what a training row asks."""
    problems = []
    d = sweep.data
    found: dict[str, list[Path]] = {}
    for key, path in (("data.path", d.path), ("data.eval_path", d.eval_path), ("data.test_path", d.test_path)):
        if path is None:
            continue
        try:
            files = find_data_files(path, key)
        except DataError as e:
            problems += [
                Problem(source, key, p.message if p.source == path else f"{p.source}: {p.message}", p.fix)
                for p in e.problems
            ]
            continue
        head_problems = load_records(files, d, limit=HEAD_ROWS)[1]
        problems += head_problems
        if not head_problems:
            found[key] = files
    if "data.path" in found:
        for key, what in (("data.eval_path", "A validation set"), ("data.test_path", "A test set")):
            if key in found:
                try:
                    problems += find_overlap(found[key], found["data.path"], d, key, what)
                except DataError as e:  # a bad row past the head: reading all of the data reports it
                    problems += e.problems
    return problems + check_frozen(sweep, source)


def check_frozen(sweep: SweepConfig, source: str, training: list[Path] | None = None) -> list[Problem]:
    """The frozen evaluation set and the guard sets (retrain) exist, parse, and ask nothing the training data
    (`data.path`, or the given files) asks."""
    sets = [("retrain.frozen_eval_path", sweep.retrain.frozen_eval_path, "A frozen evaluation set")]
    sets += [(f"retrain.guard_eval_paths[{i}]", p, "A guard set") for i, p in enumerate(sweep.retrain.guard_eval_paths)]
    problems: list[Problem] = []
    for key, path, what in sets:
        if path is None:
            continue
        try:
            found = find_data_files(path, key)
            training = training if training is not None else find_data_files(sweep.data.path, "data.path")
        except DataError as e:
            problems += [Problem(source, key, f"{p.source}: {p.message}", p.fix) for p in e.problems if p.key == key]
            continue
        head = load_records(found, sweep.data, limit=HEAD_ROWS)[1]
        problems += head or find_overlap(found, training, sweep.data, key, what)
    return problems


def check_resources(cluster: ClusterProfile, source: str) -> list[Problem]:
    """A trial's workers fit the cluster's CPUs and GPUs."""
    tr, cap = cluster.trial, cluster.capacity
    cpus = cap.cpus if cap.cpus is not None else float(os.cpu_count() or 1)
    gpus = cap.gpus if cap.gpus is not None else float(local_gpu_count())
    problems = []
    need_cpu = tr.num_workers * tr.cpus_per_worker
    if need_cpu > cpus:
        problems.append(
            Problem(
                source,
                "trial.num_workers",
                f"a trial needs {need_cpu:g} CPUs ({tr.num_workers} workers x {tr.cpus_per_worker:g}) "
                f"but the cluster has {cpus:g}",
                "Lower trial.num_workers or trial.cpus_per_worker, or raise capacity.cpus",
            )
        )
    if tr.use_gpu:
        need_gpu = tr.num_workers * tr.gpus_per_worker
        if need_gpu > gpus:
            problems.append(
                Problem(
                    source,
                    "trial.use_gpu",
                    f"a trial needs {need_gpu:g} GPUs ({tr.num_workers} workers x "
                    f"{tr.gpus_per_worker:g}) but the cluster has {gpus:g}",
                    "Lower trial.num_workers, raise capacity.gpus, or set trial.use_gpu: false",
                )
            )
    return problems


def _local_only(path: str) -> str | None:
    """Why `path` exists on one machine only, or None when every node may reach it. An absolute path outside /tmp
    and the home directory is taken on trust to be a shared mount (it cannot be checked from here). Relative
    paths resolve in each node's own working directory."""
    if not path.startswith(("/", "~")):
        return "a relative path"
    p = Path(os.path.normpath(os.path.expanduser(path)))
    for root, name in ((Path("/tmp"), "/tmp"), (Path("/var/tmp"), "/var/tmp"), (Path.home(), "the home directory")):
        if root != Path("/") and (p == root or root in p.parents):
            return f"a path under {name}"
    return None


def check_storage(cluster: ClusterProfile, source: str) -> list[Problem]:
    """A cluster of more than one node stores on something every node reaches (see `_local_only`). Object-storage
    URIs are refused for now: the data preparation and the embedded MLflow store write to local paths."""
    nodes, path = cluster.capacity.nodes, cluster.storage_path
    if "://" in path:
        return [
            Problem(
                source,
                "storage_path",
                f"object-storage URIs are not supported yet (got {path!r}): the tokenized data and the embedded "
                "MLflow store are written to a filesystem path",
                "Mount the bucket or a shared filesystem (NFS, EFS, a ReadWriteMany volume) at the same path on "
                "every node and give that path",
            )
        ]
    why = _local_only(path) if nodes > 1 else None
    if why is None:
        return check_storage_space(cluster, source)
    return [
        Problem(
            source,
            "storage_path",
            f"{why} is local to one machine, but capacity.nodes is {nodes}: every node must reach the checkpoints "
            f"and the tokenized data, and Ray refuses a head-local path for multi-node Train (got {path!r})",
            "Use a shared filesystem mount present on every node (an absolute path such as /mnt/shared/adaptune-runs)",
        )
    ]


def check_storage_space(cluster: ClusterProfile, source: str) -> list[Problem]:
    """storage_path is (or can be created as) a writable directory with at least `min_free_gb` free."""
    path = cluster.storage_path
    p = resolve_path(path).absolute()
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return [
            Problem(
                source, "storage_path", f"{probe} is a file, not a directory (got {path!r})", "Point it at a directory"
            )
        ]
    if not os.access(probe, os.W_OK | os.X_OK):
        ro = _read_only(probe)
        why = "is on a read-only filesystem" if ro else "is not writable by this user"
        return [
            Problem(
                source,
                "storage_path",
                f"{probe} {why} (got {path!r}): checkpoints, results and the tokenized data are written there",
                "Give a writable directory (or remount it read-write / fix its permissions)",
            )
        ]
    st = os.statvfs(probe)
    free_gb = st.f_bavail * st.f_frsize / 2**30
    if free_gb < cluster.min_free_gb:
        return [
            Problem(
                source,
                "storage_path",
                f"{probe} has {free_gb:.2f} GiB free, less than min_free_gb {cluster.min_free_gb:g}: checkpoints "
                "and the tokenized data would fill it mid-run",
                "Free space there, use a larger volume, or lower min_free_gb if you know the run is small",
            )
        ]
    return []


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_run(
    sweep: SweepConfig | None, cluster: ClusterProfile | None, sweep_file: str, cluster_file: str | None
) -> list[Problem]:
    """Every problem a run would hit before training starts, for whichever of the two files is valid."""
    cluster_source = cluster_file or "embedded default cluster"
    problems = []
    if sweep is not None:
        problems += check_model(sweep, sweep_file) + check_data(sweep, sweep_file) + check_search(sweep, sweep_file)
        problems += check_eval(sweep, sweep_file) + check_attention(sweep, sweep_file)
    if cluster is not None:
        problems += (
            check_resources(cluster, cluster_source)
            + check_storage(cluster, cluster_source)
            + check_tracking(cluster, cluster_source)
        )
    if sweep is not None and cluster is not None:
        problems += check_compatibility(sweep, cluster, sweep_file, cluster_source) or check_space_compatibility(
            sweep, cluster, sweep_file, cluster_source
        )
        if all(p.warning for p in problems):  # tokenizing the head is worth it only when nothing else is wrong
            problems += check_examples(sweep, cluster, sweep_file)
    return problems


SAMPLES_CHECK_BYTES = 64 * 2**20  # validate counts the validation split exactly below this much data; the run always


def check_eval(sweep: SweepConfig, source: str) -> list[Problem]:
    """The `eval` section, when trials generate answers: every scorer exists, takes (prompt, reference, answer) and
    answers a sample with a number, none shadows a reported metric, and the validation split has at least
    `eval.samples` rows (counted here for data under SAMPLES_CHECK_BYTES; the run checks it after preparing)."""
    ev = sweep.eval
    if not ev.generates(sweep.data.format):
        return []
    problems = check_scorers(ev, source, (*REPORTED_METRICS, *TAKEN_NAMES))
    try:
        files = find_data_files(sweep.data.path, "data.path")
        if sweep.data.eval_path:
            files += find_data_files(sweep.data.eval_path, "data.eval_path")
        if sum(f.stat().st_size for f in files) > SAMPLES_CHECK_BYTES:
            return problems
        validation = len(load_splits(sweep.data).splits["validation"])
    except (DataError, OSError):
        return problems  # check_data reports what is wrong with the data
    return problems + eval_samples_problems(sweep, source, validation)


def eval_samples_problems(sweep: SweepConfig, source: str, validation: int) -> list[Problem]:
    """`eval.samples` larger than the validation split (of `validation` rows with a reference answer)."""
    if sweep.eval.samples <= validation:
        return []
    where = "data.eval_path" if sweep.data.eval_path else "data.val_fraction"
    return [
        Problem(
            source,
            "eval.samples",
            f"asks for {sweep.eval.samples} validation prompts, but the validation split has {validation} rows "
            "with a reference answer",
            f"Set eval.samples to at most {validation}, or enlarge the validation split ({where})",
        )
    ]


MOSTLY_TRUNCATED = 0.5  # above this share of truncated examples, validate and the run say so


def check_examples(sweep: SweepConfig, cluster: ClusterProfile, source: str) -> list[Problem]:
    """What tokenizing the head of the data shows, as the run would tokenize it (the tokenizer files through
    the `tokenizers` library, chat rows through the real template): a template that refuses a conversation or
    does not render it prefix by prefix (the first such row, by file and line), examples longer than
    max_seq_length (a warning when most are), and fewer training examples than one batch across the workers.
    A model without a local tokenizer.json is checked when the run loads it."""
    d, model_dir = sweep.data, resolve_path(sweep.model.path)
    if not (model_dir / "tokenizer.json").is_file():
        return []
    files = find_data_files(d.path, "data.path")
    heads = [load_records([f], d, limit=HEAD_ROWS) for f in files]
    head = [r for records, _ in heads for r in records]
    if any(problems for _, problems in heads) or not head:
        return []  # check_data reported them
    from tokenizers import Tokenizer  # the Rust tokenizer alone: no torch, no transformers

    tok, facts = Tokenizer.from_file(str(model_dir / "tokenizer.json")), read_tokenizer_files(model_dir)
    special = {name: text for name, (text, _) in facts.special.items()} if facts else {}
    render = _template_render(facts.chat_template if facts else None, special) if d.format == "chat" else None

    def count(text: str, first: bool) -> int:
        return len(tok.encode(text, add_special_tokens=first).ids)

    lengths, prompts = [], []  # tokens per example, and of its prompt (what masking leaves no loss on)
    for record in head:
        if "text" in record:
            lengths.append(count(record["text"], True) + 1)
            prompts.append(0)
        elif "prompt" in record:
            prompt = count(record["prompt"], True)
            lengths.append(prompt + count(record["response"], False) + 1)
            prompts.append(prompt if d.mask_prompt else 0)
        else:
            try:
                pieces = chat_segments(record["messages"], render, d.mask_prompt, record["where"])
            except DataError as e:
                return list(e.problems)  # the first offending row: the others likely share its cause
            sizes = [(count(text, False), is_response) for text, is_response in pieces]
            lengths.append(sum(n for n, _ in sizes))
            prompts.append(next((sum(n for n, _ in sizes[:i]) for i, (_, r) in enumerate(sizes) if r), 0))
    found = []
    truncated = sum(n > d.max_seq_length for n in lengths)
    if all(p >= d.max_seq_length for p in prompts) and d.mask_prompt:
        return [
            Problem(
                source,
                "data.max_seq_length",
                f"every prompt of the first {len(head)} rows fills max_seq_length={d.max_seq_length}: no "
                "response token is left to learn from",
                "Raise data.max_seq_length",
            )
        ]
    if truncated > MOSTLY_TRUNCATED * len(lengths):
        longest = sorted(lengths)[len(lengths) // 2]
        found.append(
            Problem(
                source,
                "data.max_seq_length",
                f"{truncated} of the first {len(lengths)} examples are longer than max_seq_length="
                f"{d.max_seq_length} tokens and will be cut (half are longer than {longest}), losing their ends",
                f"Raise data.max_seq_length (to about {max(lengths)} to keep them whole), or shorten the rows",
                warning=True,
            )
        )
    complete = all(len(records) < HEAD_ROWS for records, _ in heads)
    return found + _check_batch(sweep, cluster, source, files, head, complete)


def _check_batch(
    sweep: SweepConfig, cluster: ClusterProfile, source: str, files: list[Path], head: list[dict], complete: bool
) -> list[Problem]:
    """Fewer training examples than one batch across the workers. The head is all of the data when every file
    ended before HEAD_ROWS (`complete`); otherwise the data is read in full only when a batch could be larger
    than the head's training share."""
    need = cluster.trial.num_workers * sweep.train.micro_batch_size
    rows = head
    if not complete:
        if need <= HEAD_ROWS // 2:
            return []
        rows = load_records(files, sweep.data)[0]
    train = len(split_indices([prompt_key(r) for r in rows], sweep.data)["train"])
    if train >= need:
        return []
    return [
        Problem(
            source,
            "train.micro_batch_size",
            f"the train split has {train} examples, fewer than one batch across {cluster.trial.num_workers} "
            f"workers ({cluster.trial.num_workers} x micro_batch_size {sweep.train.micro_batch_size} = {need})",
            "Add data, or lower train.micro_batch_size or trial.num_workers",
        )
    ]


def _template_render(template: str | None, special: dict[str, str]):
    """The chat template as the run renders it: transformers' own renderer (its chat-template module imports
    jinja2, not torch), with the tokenizer's special tokens as template variables; the built-in fallback when
    the tokenizer has no template."""
    from transformers.utils.chat_template_utils import render_jinja_template  # no torch: see the docstring

    chosen = template or FALLBACK_CHAT_TEMPLATE

    def render(messages: list[dict[str, str]], prompt: bool) -> str:
        out, _ = render_jinja_template([messages], chat_template=chosen, add_generation_prompt=prompt, **special)
        return out[0]

    return render
