"""The second run of this experiment: the same split at the release's budget (``README.md`` has its rule, committed
before it ran).

Per fold, in the order A-E: the shipped recipe (run 2's keys, the shipped classifier) for 5 epochs, trained and read
as the baseline was (``../presence_in_training/run.py``'s ``run_variants``; records in
``release_budget_shipped.json``), then the UNet for the epochs that fit 5 of the baseline's epochs at the paces the
first run measured alone (``runs.json``: the baseline's median time for 2 epochs, the UNet's timed epoch), with no
clock stop (records in ``release_budget_unet.json``). Finished runs are kept, so it resumes. No frame of F, G or any
other site is read.

    git show 29298f9:bundle/models/model.pt > /work/logs/unet_source_sites/model_0.9.2.pt
    PYTHONPATH=custom HF_HUB_OFFLINE=1 .venv/bin/python bundle/docs/results/experiments/unet_source_sites/release_budget.py \\
        --scratch /work/logs/unet_source_sites --readout_from /work/logs/unet_source_sites/model_0.9.2.pt
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
SITES = ("A", "B", "C", "D", "E")
RUN2 = {"lambda_contrast": 1.0, "tau": 0.07}
SHIPPED_EPOCHS = 5
SHIPPED_VARIANT = "shipped_5_epochs"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def unet_epochs() -> int:
    """The UNet epochs that fit ``SHIPPED_EPOCHS`` of the baseline's epochs, at the first run's paces (10)."""
    from mcdrl.evaluation.compare import unet_epochs_for

    run1 = json.loads((HERE / "runs.json").read_text())
    return unet_epochs_for(SHIPPED_EPOCHS * run1["budget_s"] / 2, run1["timed_epoch_s"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scratch", required=True, help="weights and logs of the runs (not kept in git)")
    p.add_argument("--readout_from", required=True,
                   help="the model.pt whose confounder-readout buffers the presence reads borrow (0.9.2's, as the baseline's reads)")
    args = p.parse_args(argv)
    run1 = _load(HERE / "run.py", "unet_source_sites_run")
    run_variants = _load(HERE.parent / "presence_in_training/run.py", "presence_in_training_run").run_variants
    scratch, out = Path(args.scratch), HERE / "release_budget_unet.json"
    epochs = unet_epochs()
    print(f"shipped recipe {SHIPPED_EPOCHS} epochs, UNet {epochs} epochs", flush=True)
    for held_out in SITES:
        run_variants({SHIPPED_VARIANT: RUN2}, HERE / "release_budget_shipped.json", scratch, SHIPPED_EPOCHS,
                     Path(args.readout_from), sites=(held_out,))
        doc = json.loads(out.read_text()) if out.exists() else {"folds": []}
        if held_out in {r["held_out"] for r in doc["folds"]}:
            continue
        work = scratch / f"unet_{epochs}_epochs_{held_out}"
        record = run1._train_unet(run1.CONFIGS, run1.BUNDLE, work, None, run1._extra(held_out, epochs))
        doc["folds"].append({"held_out": held_out, "max_epochs": epochs, "epochs": record.get("epochs"), "seed": 0,
                             "train_s": record["seconds"], "process_s": record["process_s"],
                             "held_out_source_site": run1._score(held_out, work / "models/model.pt")})
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, out)
        print(json.dumps({"held_out": held_out, "epochs": epochs, "train_s": record["seconds"]}),
              doc["folds"][-1]["held_out_source_site"]["dice"], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
