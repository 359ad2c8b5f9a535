"""The real command line: verbs, exit codes, validate's checks, shipped YAML, generated docs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from .support import DEMO_DATA, REPO, cluster_config, run_cli, sweep_config, write_yaml

pytestmark = pytest.mark.unit


def test_help_lists_every_verb():
    r = run_cli("--help")
    assert r.returncode == 0
    for verb in ("validate", "train", "demo-model", "config-reference"):
        assert f"    {verb}" in r.stdout


def test_validate_imports_no_heavy_stack(tmp_path, tiny_model):
    sweep = write_yaml(tmp_path / "s.yaml", sweep_config(tiny_model))
    code = (
        "import sys; from adaptune.cli import main; rc = main(['validate', sys.argv[1]]); "
        "heavy = sorted(m for m in ('torch', 'transformers', 'deepspeed', 'ray', 'peft', 'mlflow') "
        "if m in sys.modules); "
        "print(rc, heavy)"
    )
    r = subprocess.run([sys.executable, "-c", code, str(sweep)], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip().splitlines()[-1] == "0 []", r.stderr


def test_validate_reports_every_problem_one_line_each(tmp_path, tiny_model):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "q", "output": "a"}\n{"instruction": "q"\n', encoding="utf-8")
    sweep = write_yaml(
        tmp_path / "s.yaml",
        sweep_config(
            tiny_model,
            data={"path": str(bad)},
            lora={"target_modules": ["q_proj", "c_attn"]},
            quantization={"mode": "8bit"},
        ),
    )
    cluster = write_yaml(
        tmp_path / "c.yaml",
        {**cluster_config(tmp_path, num_workers=2), "deepspeed": {"zero_stage": 3}, "capacity": {"cpus": 1}},
    )
    r = run_cli("validate", str(sweep), "--cluster", str(cluster))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == [
        f"{sweep}: lora.target_modules: c_attn not found in this llama model; its linear layers are: mlp.down_proj, "
        "mlp.gate_proj, mlp.up_proj, self_attn.k_proj, self_attn.o_proj, self_attn.q_proj, self_attn.v_proj. "
        "Pick modules from that list",
        f"{bad}: line 2: malformed JSON: Expecting ',' delimiter. Write one JSON object per line",
        f"{cluster}: trial.num_workers: a trial needs 2 CPUs (2 workers x 1) but the cluster has 1. Lower "
        "trial.num_workers or trial.cpus_per_worker, or raise capacity.cpus",
        f"{sweep}: quantization.mode: 8-bit quantization cannot be sharded by ZeRO-3 (got 8bit with zero_stage 3). "
        "Use quantization.mode=4bit, or deepspeed.zero_stage <= 2",
    ]


def test_validate_model_directory_problems(tmp_path, tiny_model):
    sweep = write_yaml(tmp_path / "s.yaml", sweep_config(tmp_path / "modle"))
    (tmp_path / "model").mkdir()
    r = run_cli("validate", str(sweep))
    assert r.returncode == 2
    assert (
        f"model.path: model directory '{tmp_path / 'modle'}' does not exist. Did you mean {tmp_path / 'model'}?"
        in r.stderr
    )
    r = run_cli("validate", str(sweep), f"model.path={tmp_path / 'model'}")
    assert f"{sweep}: model.path: no tokenizer in {tmp_path / 'model'}" in r.stderr
    assert f"model.path: no config.json in {tmp_path / 'model'}" in r.stderr


def test_shipped_sweeps_and_profiles_validate(tiny_model):
    """Every shipped file through the real CLI (a GPU sweep against the GPU profiles). The GPU sweeps name hub
    models and a shared data path this machine lacks, and the GPU profile reports to a team's MLflow server:
    those keys point at the tiny model, the demo data, the demo frozen set and the embedded MLflow store, and the
    prompts answered in evaluation are as many as the demo data's smallest validation split holds; everything
    else is as shipped."""
    sweeps = sorted((REPO / "search_spaces").glob("*.yaml"))
    clusters = sorted((REPO / "clusters").glob("*.yaml"))
    assert {s.name for s in sweeps} >= {"quickstart.yaml", "llama3-8b-qlora.yaml", "qwen2.5-7b-lora.yaml"}
    assert {c.name for c in clusters} >= {"local.yaml", "gpu-node.yaml"}
    for path in sweeps + clusters:
        lines = path.read_text().splitlines()
        header = lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))]
        assert any("adaptune " in line for line in header), f"{path} must open with the commands that use it"
    gpu = {c for c in clusters if yaml.safe_load(c.read_text())["trial"].get("use_gpu")}
    for sweep in sweeps:
        # A sweep whose header runs it on a GPU profile may use what needs CUDA (paged optimizers, LoftQ): it is
        # checked against the GPU profiles, which is also what tells it from the CPU sweeps.
        on_gpu = "--cluster clusters/gpu" in sweep.read_text().split("\nname:")[0]
        for cluster in sorted(gpu) if on_gpu else clusters:
            r = run_cli(
                "validate",
                str(sweep.relative_to(REPO)),
                "--cluster",
                str(cluster.relative_to(REPO)),
                f"model.path={tiny_model}",
                f"data.path={DEMO_DATA}",
                "data.format=instruction",
                "retrain.frozen_eval_path=data/demo/frozen_eval.jsonl",
                "retrain.merge_dir=null",
                "cluster.mlflow.tracking_uri=null",
                "eval.samples=8",  # 5% of the 400 demo rows is 20
            )
            assert r.returncode == 0, r.stderr


def test_quickstart_points_at_the_demo_model_and_data():
    r = run_cli("validate", "search_spaces/quickstart.yaml", "model.path=nowhere")
    assert "model.path: model directory 'nowhere' does not exist" in r.stderr
    assert "adaptune demo-model" in r.stderr
    assert (REPO / "data" / "demo" / "company_faq.jsonl") == DEMO_DATA and DEMO_DATA.stat().st_size > 10_000


def test_config_reference_is_generated_from_the_schema():
    r = run_cli("config-reference")
    assert r.returncode == 0
    assert r.stdout == (REPO / "docs" / "config.md").read_text(encoding="utf-8"), (
        "docs/config.md is stale: run `adaptune config-reference > docs/config.md`"
    )
    for key in ("lora.target_modules", "quantization.quant_storage", "trial.num_workers", "deepspeed.zero_stage"):
        assert f"| `{key}` |" in r.stdout


def test_validate_checks_the_search_space_against_model_and_cluster(tmp_path, tiny_model):
    zero3 = write_yaml(tmp_path / "c.yaml", {**cluster_config(tmp_path), "deepspeed": {"zero_stage": 3}})

    def validate(search):
        cfg = sweep_config(tiny_model)
        cfg["search"] = search
        return run_cli("validate", str(write_yaml(tmp_path / "s.yaml", cfg)), "--cluster", str(zero3))

    some_ok = validate({"space": {"quantization.mode": {"choice": ["none", "8bit"]}}})
    assert some_ok.returncode == 0, some_ok.stderr  # the 8-bit trials are skipped and reported at run time
    assert "ZeRO-3, quantization none/8bit (searched);" in some_ok.stdout  # what the space samples, not the base
    r = validate({"space": {"quantization.mode": {"choice": ["8bit"]}}})
    assert r.returncode == 2
    assert r.stderr.strip() == (
        f"{tmp_path / 's.yaml'}: search.space: every combination of quantization.mode is incompatible with this "
        "cluster: 8-bit quantization cannot be sharded by ZeRO-3 (got 8bit with zero_stage 3). Widen the space or "
        "change the cluster"
    )
    r = validate({"space": {"lora.target_modules": {"choice": ["attention", ["q_proj", "wq"]]}}, "metric": "loss"})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(f"{tmp_path / 's.yaml'}: search.space.lora.target_modules: wq not found in this llama")
    assert lines[1] == (
        f"{tmp_path / 's.yaml'}: search.metric: the trainer does not report 'loss'. Did you mean `eval_loss`?"
    )


def test_validate_reports_an_unreachable_or_wrong_tracking_server_with_its_uri(tmp_path, tiny_model):
    import http.server
    import threading

    from .support import free_port

    sweep = write_yaml(tmp_path / "s.yaml", sweep_config(tiny_model))
    cluster = write_yaml(tmp_path / "c.yaml", cluster_config(tmp_path))
    dead = f"http://127.0.0.1:{free_port()}"
    r = run_cli("validate", str(sweep), "--cluster", str(cluster), f"cluster.mlflow.tracking_uri={dead}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (
        f"{cluster}: mlflow.tracking_uri: MLflow tracking server {dead} is unreachable ([Errno 111] Connection "
        "refused). Start the server (see docs/mlflow.md: 'A production tracking server'), or fix "
        "mlflow.tracking_uri in the cluster profile / MLFLOW_TRACKING_URI"
    )
    # Something answers, but not MLflow (a wrong port, a proxy's error page).
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        wrong = f"http://127.0.0.1:{server.server_address[1]}"
        r = run_cli("validate", str(sweep), "--cluster", str(cluster), env={"MLFLOW_TRACKING_URI": wrong})
    finally:
        server.shutdown()
    assert r.returncode == 2
    assert f"{wrong} answered HTTP 404 (File not found): not an MLflow tracking server" in r.stderr, r.stderr


def _past_sweep(storage, name: str, sweep_id: str, trial: str, loss: float) -> None:
    """A sweep's results.json as a sweep writes it, for one trial that won."""
    from adaptune.driver.sweep import write_results

    directory = storage / name / sweep_id
    directory.mkdir(parents=True)
    row = {"trial": trial, "lora.r": 4, "eval_loss": loss, "steps": 20, "wall_s": 12.0, "status": "finished"}
    row.update(reason="", adapter=str(directory / "trials" / trial / "adapter"))
    summary = {"metric": "eval_loss", "scores": [], "tracking_uri": "sqlite:///x.db", "experiment_id": "1"}
    write_results([row], row, directory, held_out=f"winner {trial} test eval_loss 0.5", summary=summary)


def test_results_prints_a_past_sweep_the_newest_by_default_or_by_id_or_by_sweep_file(tmp_path, tiny_model):
    from adaptune.driver.sweep import record_registration
    from adaptune.tracking.registry import Registration

    storage = tmp_path / "runs"
    _past_sweep(storage, "shop", "sweep-20261201-100000", "t_old", 0.5)
    _past_sweep(storage, "shop", "sweep-20261202-100000", "t_new", 0.4)
    _past_sweep(storage, "other", "sweep-20261130-100000", "t_other", 0.3)
    record_registration(storage / "shop" / "sweep-20261202-100000", Registration("shop", "3", ["challenger"]))
    cluster = write_yaml(tmp_path / "cluster.yaml", cluster_config(storage))
    at = f"cluster.storage_path={storage}"

    newest = run_cli("results", at)
    assert newest.returncode == 0, newest.stderr
    lines = newest.stdout.splitlines()
    assert lines[0].split() == ["trial", "lora.r", "best", "eval_loss", "steps", "wall_s", "status"]
    assert lines[2].split() == ["t_new", "4", "0.4000", "20", "12.0", "finished"]
    assert "winner   t_new: eval_loss 0.4000" in lines and "test     winner t_new test eval_loss 0.5" in lines
    assert f"results  {storage / 'shop' / 'sweep-20261202-100000'}/results.csv, results.json" in lines
    assert "registry shop version 3 (@challenger)" in lines
    by_id = run_cli("results", "sweep-20261201-100000", "--cluster", str(cluster))
    assert "winner   t_old: eval_loss 0.5000" in by_id.stdout, by_id.stderr
    other = write_yaml(tmp_path / "other.yaml", {**sweep_config(tiny_model), "name": "other"})
    by_file = run_cli("results", str(other), "--cluster", str(cluster))
    assert "winner   t_other: eval_loss 0.3000" in by_file.stdout, by_file.stderr
    by_dir = run_cli("results", str(storage / "shop" / "sweep-20261201-100000"))
    assert "winner   t_old: eval_loss 0.5000" in by_dir.stdout, by_dir.stderr

    missing = run_cli("results", "sweep-20261203-000000", at)
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.splitlines() == [
        f"{storage}: SWEEP: no sweep 'sweep-20261203-000000' with results. Sweeps there: sweep-20261130-100000, "
        "sweep-20261201-100000, sweep-20261202-100000"
    ], missing.stderr
    empty = run_cli("results", f"cluster.storage_path={tmp_path / 'none'}")
    assert empty.returncode == 2 and "no sweep with results yet" in empty.stderr, empty.stderr


def test_ui_names_a_tracking_server_and_refuses_a_store_that_is_not_there(tmp_path):
    server = run_cli("ui", "--tracking-uri", "http://mlflow.internal:5000")
    assert server.returncode == 0 and "open http://mlflow.internal:5000 in a browser" in server.stdout
    missing = run_cli("ui", str(tmp_path / "runs"))
    assert missing.returncode == 2, missing.stderr
    assert f"no MLflow store at sqlite:///{tmp_path / 'runs' / 'mlflow.db'} yet" in missing.stderr
