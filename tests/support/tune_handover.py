"""A Tune trial that hands Tune its reports the way a Ray Train controller does (`TuneReportCallback`'s queue
actor) and returns while its last report still waits there, because a slow result callback keeps the trial's
main thread away. Run as `python -m tests.support.tune_handover STORAGE [--no-wait]` against RAY_ADDRESS; it
prints the last step Tune recorded. Without `_wait_for_tune_to_take` (`--no-wait`) the trial hangs (Ray 2.60)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPORTS = 2
SLOW_CALLBACK_S = 1.5


def trainable(config: dict) -> None:
    from ray.train._internal.session import get_session

    from adaptune.driver.trial import _handed_to_tune, _wait_for_tune_to_take

    reports = get_session()._get_or_create_inter_actor_queue()
    before = _handed_to_tune()
    for step in range(1, REPORTS + 1):
        reports.put({"step": step})  # what TuneReportCallback.after_report does in the controller
    if config["wait"]:
        _wait_for_tune_to_take(before, Path(config["stop_file"]))


def main(storage: str, wait: bool) -> None:
    import ray
    from ray import tune

    class SlowResults(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            time.sleep(SLOW_CALLBACK_S)

    ray.init(logging_level="ERROR")
    tuner = tune.Tuner(
        trainable,
        param_space={"wait": wait, "stop_file": str(Path(storage, "stop_requested"))},
        run_config=tune.RunConfig(storage_path=storage, callbacks=[SlowResults()], verbose=0),
    )
    (result,) = tuner.fit()
    print(f"last step {result.metrics['step']}")


if __name__ == "__main__":
    main(sys.argv[1], wait="--no-wait" not in sys.argv)
