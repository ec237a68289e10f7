"""Re-run, on the current code, one run (held-out A, seed 0) of each configuration whose 0.6.0 runs the new grid
reuses, through the runner's own path (spawned workers, 1 thread each), and compare with the reused record."""
import json, sys
from pathlib import Path
from mcdrl.evaluation.loso import runner
from mcdrl.evaluation.loso.methods import all_methods
from mcdrl.evaluation.loso.profiles import PROFILES

if __name__ == "__main__":
    b = Path("bundle").resolve()
    prep = runner.prepare(PROFILES["full"], b, "mcdrl-demo-vit", str(b / "models/clip/mcdrl-demo-vit.safetensors"),
                          str(b / "models/confounder_dictionary.safetensors"), "data/benchmark")
    grid = Path(prep.work_dir)
    prep.work_dir = sys.argv[1]
    Path(prep.work_dir).mkdir(parents=True, exist_ok=True)
    ms = all_methods()
    names = ["mcdrl", "paper_baseline", "paper_mcdrl", "with_text"]
    recs = runner.run_grid(prep, [(ms[n], (0,)) for n in names], held_out=("A",))
    ok = True
    for n, r in zip(names, recs):
        rid = runner.run_id(ms[n], "A", 0, False, prep.configs_dir)
        old = json.loads((grid / f"{rid}.json").read_text())
        same = {k: old[k] == r[k] for k in ("rows", "source_validation_dice", "selected_epoch", "presence_threshold")}
        d_old = sum(x["dice"] for x in old["rows"]) / len(old["rows"]); d_new = sum(x["dice"] for x in r["rows"]) / len(r["rows"])
        print(f"{n:>15} {rid}: reused held-out A Dice {d_old:.5f} / recomputed {d_new:.5f}; source-val {old['source_validation_dice']:.5f} / {r['source_validation_dice']:.5f}; identical: {same}")
        ok &= all(same.values())
    print("ALL IDENTICAL" if ok else "DIFFERENT")
