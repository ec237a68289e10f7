"""The pixel-pathway variants' eval forward over the bare CLIP visual forward (issue 23's speed bound: <= 1.2 for
ViT-B/16 at batch 1 and 8), interleaved, with the speed wing's helpers and random weights (which time as trained
ones), as ``../head_0.9.2/speed_heads.py`` measured the heads; and each variant's FLOPs for one training step (batch 8
at 224 px, forward and backward, ``torch.utils.flop_counter``), which no other load on the machine changes.

    PYTHONPATH=custom python bundle/docs/results/experiments/pixel_pathway/speed.py mcdrl-demo-vit 9 speed_demo.json
    PYTHONPATH=custom python bundle/docs/results/experiments/pixel_pathway/speed.py ViT-B-16 9 speed_vitb16.json

The rule reads the demo CLIP's FLOPs (the model that ``compare`` trains; the cost bound) and ViT-B/16's ratios (the
speed bound). Time it on idle cores only; the FLOPs are exact anywhere. With ``--flops_only`` (any load) it writes the
FLOPs row alone, with the MONAI UNet's step beside it; ``flops_demo.json`` is that output, the README's cost figures:

    PYTHONPATH=custom python bundle/docs/results/experiments/pixel_pathway/speed.py mcdrl-demo-vit 0 flops_demo.json --flops_only
"""
import importlib.util
import json
import statistics
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mcdrl.engines.training import param_groups
from mcdrl.evaluation.speed.runner import frame_size, random_network
from mcdrl.evaluation.speed.timing import interleaved, paired_ratio

spec = importlib.util.spec_from_file_location("pixel_pathway_run", Path(__file__).with_name("run.py"))
run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run)
# the network's keys only (the loss weights do not change a forward)
variants = {"shipped": {}, **{k: {x: y for x, y in v.items() if x.startswith("decoder_")} for k, v in run.VARIANTS.items()}}
over_cost = run.OVER_COST  # FLOPs only: they are not candidates


def train_step_gflops(net, size: int = 224, batch: int = 8) -> float:
    """Forward and backward of one training batch (B, 3, size, size), with the parameters that ``train.json``
    trains (the last CLIP block and every new module: ``param_groups``), in GFLOPs."""
    param_groups(net, 1e-3, backbone_lr_scale=0.01, backbone_trainable_blocks=1)
    net.train()
    with FlopCounterMode(display=False) as fc:
        net(torch.rand(batch, 3, size, size))["pred"].float().sum().backward()
    net.eval().zero_grad(set_to_none=True)
    return round(fc.get_total_flops() / 1e9, 1)


def unet_train_step_gflops(size: int = 224, batch: int = 8) -> float:
    """The same for the MONAI UNet that ``compare`` trains (``train.json`` + ``unet.json``)."""
    from monai.bundle import ConfigParser

    configs = REPO / "bundle/configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "unet.json")])
    parser["bundle_root"] = str(REPO / "bundle")
    net = parser.get_parsed_content("network_def").train()
    with FlopCounterMode(display=False) as fc:
        net(torch.rand(batch, 3, size, size)).float().sum().backward()
    return round(fc.get_total_flops() / 1e9, 1)


REPO = Path(__file__).resolve().parents[5]
model, rounds, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
nets = {k: random_network(model, **v) for k, v in variants.items()}
ref = nets["shipped"]
s, size = ref.image_size, frame_size(model)
rows = [{"model": model, "train_step_gflops_batch8_224": {k: train_step_gflops(n) for k, n in nets.items()},
         "parameters_m": {k: round(sum(p.numel() for p in n.parameters()) / 1e6, 3) for k, n in nets.items()},
         "over_cost_train_step_gflops_batch8_224": {k: train_step_gflops(random_network(model, **v)) for k, v in over_cost.items()},
         "monai_unet_train_step_gflops_batch8_224": unet_train_step_gflops()}]
print(json.dumps(rows[0]), flush=True)
for b in () if "--flops_only" in sys.argv else (1, 8):
    x = torch.rand(b, 3, size, size)
    xn = ref.backbone.normalize(torch.rand(b, 3, s, s))
    fns = {"visual": lambda: ref.backbone.visual(xn), **{k: (lambda n=n: n(x)) for k, n in nets.items()}}
    with torch.inference_mode():
        t = interleaved(fns, rounds)
    row = {"model": model, "batch": b, "input_size": size, **{f"{k}_ms": round(statistics.median(v), 1) for k, v in t.items()},
           **{f"{k}_over_visual": round(paired_ratio(t, k, "visual"), 3) for k in variants}}
    print(json.dumps(row), flush=True)
    rows.append(row)
with open(out_path, "w") as f:
    json.dump(rows, f, indent=1)
