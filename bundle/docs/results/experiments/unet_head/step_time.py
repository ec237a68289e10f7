"""One training step of the shipped network, of the UNet head (``configs/unet_head.json``) and of the MONAI UNet
(``unet.json``): interleaved rounds, random weights (which time as trained ones), batch 8 at 224 px, the demo CLIP,
``train.json``'s loss and AdamW; FLOPs from ``torch.utils.flop_counter`` (exact on any machine). The times are only
comparable within one run (the rounds are interleaved, so a busy machine slows all three alike, roughly).

    PYTHONPATH=custom python bundle/docs/results/experiments/unet_head/step_time.py 9 step_time.json
"""
import json
import statistics
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mcdrl.evaluation.speed.runner import _parser, _randomise_dictionary
from mcdrl.evaluation.speed.timing import interleaved, machine_info, paired_ratio

rounds, out_path = int(sys.argv[1]), Path(sys.argv[2])
batch, size = 8, 224
x = torch.rand(batch, 3, size, size)
label = (torch.rand(batch, 1, size, size) > 0.8).float()
CONFIGS = {"shipped": "train.json", "unet_head": "train.json+unet_head.json", "unet": "train.json+unet.json"}


def training_step(config: str):
    torch.manual_seed(0)
    parser = _parser(config, "mcdrl-demo-vit")
    net = parser.get_parsed_content("network_def").train()
    loss = parser.get_parsed_content("loss")
    if hasattr(net, "dictionary"):
        _randomise_dictionary(net, 0)
        opt = parser.get_parsed_content("optimizer")
        target = {"label": label, "lesion_class": torch.randint(0, len(net.dictionary.class_embeddings), (batch,))}
    else:  # the UNet: train.json's AdamW settings on its own parameters
        opt, target = torch.optim.AdamW(net.parameters(), 1e-3), label

    def step():
        opt.zero_grad(set_to_none=True)
        loss(net(x), target).backward()
        opt.step()

    return step


steps = {name: training_step(config) for name, config in CONFIGS.items()}
flops = {}
for name, fn in steps.items():
    with FlopCounterMode(display=False) as fc:
        fn()
    flops[name] = round(fc.get_total_flops() / 1e9, 2)
t = interleaved(steps, rounds)
doc = {"command": "python bundle/docs/results/experiments/unet_head/step_time.py " + " ".join(sys.argv[1:]),
       "machine": machine_info(), "threads": torch.get_num_threads(), "batch": batch, "size": size,
       "clip": "mcdrl-demo-vit", "rounds": rounds, "configs": CONFIGS,
       "median_ms": {k: round(statistics.median(v), 1) for k, v in t.items()}, "gflops": flops,
       "time_over_shipped": {k: round(paired_ratio(t, k, "shipped"), 3) for k in steps},
       "time_over_unet": {k: round(paired_ratio(t, k, "unet"), 3) for k in steps}}
print(json.dumps(doc, indent=1))
out_path.write_text(json.dumps(doc, indent=1) + "\n")
