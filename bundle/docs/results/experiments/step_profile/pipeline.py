"""How much of an epoch is the data pipeline (the question `../cheap_classifier/README.md` left: a classifier 0.59 x
the shipped step's time saved only about a fifth of an epoch).

On idle cores, the training transforms of ``train.json`` (the shipped recipe) on the synthetic world's training
frames of sites A-E, in the order the datalist gives them:

* each stage's CPU time per frame, in this process with one thread: ``loading`` (PNG read, channel first, the model's
  input scaling, label binarising, resize to 224: deterministic, so it could be cached), ``augmentation`` (flips,
  ``RandConfounderd``, the photometric augmentation: random, so it cannot) and ``finishing``;
* the bundle's own ``DataLoader`` (batch 8, 2 workers, as ``train.json`` builds it) run alone, with no training
  step: the wall time per batch when the workers have the two cores to themselves.

    PYTHONPATH=custom .venv/bin/python bundle/docs/results/experiments/step_profile/pipeline.py 320 40 pipeline.json
"""
import json
import sys
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from mcdrl.evaluation.speed.timing import machine_info

frames, batches, out_path = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
REPO = Path(__file__).resolve().parents[5]
torch.set_num_threads(1)
parser = ConfigParser()
parser.read_config(str(REPO / "bundle/configs/train.json"))
parser.read_meta(str(REPO / "bundle/configs/metadata.json"))
parser["bundle_root"] = str(REPO / "bundle")
datalist = parser.get_parsed_content("train#datalist")
stages = {name: Compose(parser.get_parsed_content(f"train#{name}")) for name in ("loading", "augmentation", "finishing")}
stages["augmentation"].set_random_state(0)

seconds = dict.fromkeys(stages, 0.0)
for item in datalist[:frames]:
    data = dict(item)
    for name, stage in stages.items():
        t0 = time.process_time()
        data = stage(data)
        seconds[name] += time.process_time() - t0
per_frame_ms = {name: round(1000 * s / frames, 2) for name, s in seconds.items()}

loader = parser.get_parsed_content("train#dataloader")
batch_size, workers = parser.get_parsed_content("batch_size"), parser.get_parsed_content("num_workers")
it = iter(loader)
next(it)  # the workers start and fill their prefetch queues
t0 = time.perf_counter()
for _ in range(batches):
    next(it)
loader_ms = 1000 * (time.perf_counter() - t0) / batches
del it

steps = -(-len(datalist) // batch_size)
cpu_batch_ms = batch_size * sum(per_frame_ms.values())
result = {
    "command": "PYTHONPATH=custom .venv/bin/python bundle/docs/results/experiments/step_profile/pipeline.py "
               + " ".join(sys.argv[1:]),
    "machine": machine_info(),
    "frames_timed": frames, "training_frames": len(datalist), "batch_size": batch_size, "num_workers": workers,
    "cpu_ms_per_frame": per_frame_ms,
    "cpu_ms_per_batch": round(cpu_batch_ms, 1),
    "cpu_s_per_epoch": round(cpu_batch_ms * steps / 1000, 1),
    "loading_share": round(per_frame_ms["loading"] / sum(per_frame_ms.values()), 3),
    "loader_alone_ms_per_batch": round(loader_ms, 1),
    "loader_alone_s_per_epoch": round(loader_ms * steps / 1000, 1),
}
out_path.write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps(result, indent=1))
