"""The head alternatives' eval forward over the bare CLIP visual forward (issue 23's speed bound), interleaved, with
the speed wing's own helpers and random weights (which time as trained ones).

    PYTHONPATH=custom python bundle/docs/results/experiments/head_0.9.2/speed_heads.py ViT-B-16 9 OUT.json

wrote ``speed_vitb16.json`` (on the 2 idle cores; the text-query head as it ships, with the batched first conv).
"conv (shipped)" names the 1x1-conv head, which shipped when this was measured (the overrides now say so).
"""
import json
import statistics
import sys

import torch

from mcdrl.evaluation.speed.runner import frame_size, random_network
from mcdrl.evaluation.speed.timing import interleaved, paired_ratio

model, rounds, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
variants = {"conv (shipped)": {"decoder_classifier": "conv"}, "residual": {"decoder_classifier": "conv", "decoder_skip_block": "residual"},
            "text_queries": {"decoder_classifier": "text_queries"}}
nets = {k: random_network(model, **v) for k, v in variants.items()}
ref = nets["conv (shipped)"]
s, size = ref.image_size, frame_size(model)
rows = []
for b in (1, 8):
    x = torch.rand(b, 3, size, size)
    xn = ref.backbone.normalize(torch.rand(b, 3, s, s))
    fns = {"visual": lambda: ref.backbone.visual(xn), **{k: (lambda n=n: n(x)) for k, n in nets.items()}}
    with torch.inference_mode():
        t = interleaved(fns, rounds)
    row = {"model": model, "batch": b, "input_size": size, **{f"{k}_ms": round(statistics.median(v), 1) for k, v in t.items()},
           **{f"{k}_over_visual": round(paired_ratio(t, k, "visual"), 3) for k in variants}}
    print(json.dumps(row))
    rows.append(row)
with open(out_path, "w") as f:
    json.dump(rows, f, indent=1)
