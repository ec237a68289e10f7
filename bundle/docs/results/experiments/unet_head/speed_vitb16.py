"""The UNet head's eval forward over the bare CLIP visual forward (issue 23's speed bound, 1.2 x for ViT-B/16 at
batch 1 and 8), beside the shipped head's, interleaved, with the speed wing's own helpers and random weights (which
time as trained ones). The bound is read on idle cores; a run beside other work is an indication only.

    PYTHONPATH=custom python bundle/docs/results/experiments/unet_head/speed_vitb16.py ViT-B-16 9 OUT.json
"""
import json
import statistics
import sys

import torch

from mcdrl.evaluation.speed.runner import frame_size, random_network
from mcdrl.evaluation.speed.timing import interleaved, machine_info, paired_ratio

model, rounds, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
configs = {"shipped": "inference.json", "unet_head": "inference.json+unet_head.json"}
nets = {k: random_network(model, config=c) for k, c in configs.items()}
ref = nets["shipped"]
s, size = ref.image_size, frame_size(model)
rows = []
for b in (1, 8):
    x = torch.rand(b, 3, size, size)
    xn = ref.backbone.normalize(torch.rand(b, 3, s, s))
    fns = {"visual": lambda: ref.backbone.visual(xn), **{k: (lambda n=n: n(x)) for k, n in nets.items()}}
    with torch.inference_mode():
        t = interleaved(fns, rounds)
    row = {"model": model, "batch": b, "input_size": size, **{f"{k}_ms": round(statistics.median(v), 1) for k, v in t.items()},
           **{f"{k}_over_visual": round(paired_ratio(t, k, "visual"), 3) for k in configs}}
    print(json.dumps(row), flush=True)
    rows.append(row)
with open(out_path, "w") as f:
    json.dump({"command": "python bundle/docs/results/experiments/unet_head/speed_vitb16.py " + " ".join(sys.argv[1:]),
               "machine": machine_info(), "rows": rows}, f, indent=1)
    f.write("\n")
