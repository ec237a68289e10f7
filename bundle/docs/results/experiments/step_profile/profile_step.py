"""Why one training step of the shipped network takes far longer than the MONAI UNet's, for 1.34x its FLOPs (the
question `../pixel_pathway/README.md` left open). On idle cores, interleaved, random weights (which time as trained
ones), batch 8 at 224 px, the demo CLIP:

* the shipped step (``train.json``: network, loss, AdamW) and the UNet's (``train.json`` + ``unet.json``);
* the head's text-query classifier alone, forward and backward, on the features the shipped step gives it;
* each one's FLOPs (``torch.utils.flop_counter``, exact on any machine);
* the profiler's operator table of one shipped step (``ops.txt``).

    PYTHONPATH=custom python bundle/docs/results/experiments/step_profile/profile_step.py 9 profile.json ops.txt
"""
import json
import statistics
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from mcdrl.evaluation.speed.runner import _parser, _randomise_dictionary
from mcdrl.evaluation.speed.timing import interleaved, machine_info, paired_ratio

rounds, out_path, ops_path = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
batch, size = 8, 224
torch.manual_seed(0)
parser = _parser("train.json", "mcdrl-demo-vit")
net = parser.get_parsed_content("network_def").train()
_randomise_dictionary(net, 0)
loss, opt = parser.get_parsed_content("loss"), parser.get_parsed_content("optimizer")
x = torch.rand(batch, 3, size, size)
target = {"label": (torch.rand(batch, 1, size, size) > 0.8).float(),
          "lesion_class": torch.randint(0, len(net.dictionary.class_embeddings), (batch,))}

unet_parser = _parser("train.json+unet.json", "mcdrl-demo-vit")
unet = unet_parser.get_parsed_content("network_def").train()
unet_loss, unet_opt = unet_parser.get_parsed_content("loss"), torch.optim.AdamW(unet.parameters(), 1e-3)

classifier = net.head.classifier
features = torch.randn(batch, classifier.reduce[-1].in_channels, size, size, requires_grad=True)
queries = net.class_queries()
embedding = torch.randn(batch, queries.shape[-1])


def shipped():
    opt.zero_grad(set_to_none=True)
    loss(net(x), target).backward()
    opt.step()


def unet_step():
    unet_opt.zero_grad(set_to_none=True)
    unet_loss(unet(x), target["label"]).backward()
    unet_opt.step()


def classifier_only():
    features.grad = None
    classifier.zero_grad(set_to_none=True)
    classifier(features, queries, embedding).float().sum().backward()


fns = {"shipped_step": shipped, "unet_step": unet_step, "text_query_classifier": classifier_only}
flops = {}
for name, fn in fns.items():
    with FlopCounterMode(display=False) as fc:
        fn()
    flops[name] = round(fc.get_total_flops() / 1e9, 2)
t = interleaved(fns, rounds)
ms = {k: round(statistics.median(v), 1) for k, v in t.items()}
with profile(activities=[ProfilerActivity.CPU]) as prof:
    shipped()
ops_path.write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30) + "\n")
doc = {"command": "python bundle/docs/results/experiments/step_profile/profile_step.py " + " ".join(sys.argv[1:]),
       "machine": machine_info(), "batch": batch, "size": size, "clip": "mcdrl-demo-vit", "rounds": rounds,
       "median_ms": ms, "gflops": flops,
       "shipped_over_unet_time": round(paired_ratio(t, "shipped_step", "unet_step"), 3),
       "shipped_over_unet_flops": round(flops["shipped_step"] / flops["unet_step"], 3),
       "classifier_share_of_shipped_time": round(paired_ratio(t, "text_query_classifier", "shipped_step"), 3),
       "classifier_share_of_shipped_flops": round(flops["text_query_classifier"] / flops["shipped_step"], 3),
       "classifier_intermediate_floats": batch * len(queries) * classifier.sizes[0][1] * size * size,
       "shipped_without_classifier_over_unet_time": round(statistics.median(
           (a - c) / b for a, b, c in zip(t["shipped_step"], t["unet_step"], t["text_query_classifier"])), 3)}
print(json.dumps(doc, indent=1))
out_path.write_text(json.dumps(doc, indent=1) + "\n")
