"""One-off: the 0.6.0 full grid's runs under the runner's new run ids (digest of the trained configuration).

    python migrate.py OLD_CONFIGS [NEW_GRID_DIR]

OLD_CONFIGS holds 0.6.0's bundle/configs/*.json (git show 38939b7:bundle/configs/<f>). Old id = digest of
effective_key under them; new id = digest of run_config under the same configs. Without NEW_GRID_DIR it only
prints the mapping; with it, it copies (not moves) every record and run log there."""
import hashlib, json, shutil, sys
from pathlib import Path
from mcdrl.evaluation.loso.methods import all_methods, Method
from mcdrl.evaluation.loso.runner import effective_key, run_config, run_id

old_cfg = Path(sys.argv[1])
new_cfg = Path("bundle/configs")
src = Path("data/benchmark/runs/full-0fcccdfe1a")
dst = Path(sys.argv[2]) if len(sys.argv) > 2 else None
meths = dict(all_methods())
meths["with_text_all"] = Method("with_text_all", "", overrides={"deconfounding": "all"})  # 0.6.0's with_text
old_ids = {}
for name, m in meths.items():
    old = hashlib.sha256(json.dumps(effective_key(m, old_cfg), sort_keys=True, default=str).encode()).hexdigest()[:10]
    new_old = run_id(m, "A", 0, False, old_cfg).split("-")[0]
    new_new = run_id(m, "A", 0, False, new_cfg).split("-")[0]
    have = (src / f"{old}-A-s0.json").exists()
    print(f"{name:>20} old {old} (have runs: {have}) -> new id under 0.6.0 configs {new_old}; under current configs {new_new}")
    old_ids[old] = new_old
if dst:
    dst.mkdir(parents=True, exist_ok=True)
    n = 0
    for f in sorted(src.glob("*.json")):
        old, rest = f.name.split("-", 1)
        new = old_ids[old]
        shutil.copy2(f, dst / f"{new}-{rest}")
        if (src / f.stem).is_dir():
            shutil.copytree(src / f.stem, dst / f"{new}-{f.stem.split('-', 1)[1]}", dirs_exist_ok=True)
        n += 1
    print(f"copied {n} records into {dst}")
