"""Two exact rewrites of the head's text-query classifier, timed against it (forward and backward, batch 8 at 224 px,
the demo head's 12 channels in, Q = 6 queries, hidden 8), interleaved, on one thread:

* ``grouped``: the second and third dynamic 1x1 convs as one grouped ``conv2d`` (groups = B * Q) instead of ``baddbmm``;
* ``pixels_major``: the features kept as (B, H*W, hidden), the first conv one ``baddbmm`` per image over all queries,
  the others an ``einsum`` over (pixel, query).

Each must give the same logits and input gradient (max differences printed).

    PYTHONPATH=custom python bundle/docs/results/experiments/step_profile/classifier_rewrites.py 5
"""
import json
import statistics
import sys

import torch
import torch.nn.functional as F

from mcdrl.evaluation.speed.timing import interleaved
from mcdrl.networks.head import TextQueryClassifier

torch.set_num_threads(1)
torch.manual_seed(0)
B, Q, S = 8, 6, 224
clf = TextQueryClassifier(12, 192)
features = torch.randn(B, 12, S, S, requires_grad=True)
queries, embedding = torch.randn(Q, 192), torch.randn(B, 192)


def _params(features, queries, embedding):
    b, q = features.shape[0], queries.shape[0]
    cond = torch.cat([F.normalize(embedding, dim=-1).unsqueeze(1).expand(b, q, -1),
                      F.normalize(queries, dim=-1).unsqueeze(0).expand(b, q, -1)], dim=-1)
    return clf.controller(cond), clf.reduce(features)


def _layers(params, b, q):
    offset = 0
    for j, (cin, cout) in enumerate(clf.sizes):
        w = params[..., offset:offset + cin * cout].reshape(b, q, cout, cin)
        offset += cin * cout
        yield j, cin, cout, w, params[..., offset:offset + cout]
        offset += cout


def grouped(features, queries, embedding):
    b, q = features.shape[0], queries.shape[0]
    params, h = _params(features, queries, embedding)
    size = h.shape[-2:]
    for j, cin, cout, w, bias in _layers(params, b, q):
        if j == 0:
            h = torch.baddbmm(bias.reshape(b, q * cout, 1), w.reshape(b, q * cout, cin), h.flatten(2)).reshape(1, b * q * cout, *size)
        else:
            h = F.conv2d(h, w.reshape(b * q * cout, cin, 1, 1), bias.reshape(-1), groups=b * q)
        if j < len(clf.sizes) - 1:
            h = F.relu(h)
    return h.reshape(b, q, *size)


def pixels_major(features, queries, embedding):
    b, q = features.shape[0], queries.shape[0]
    params, h = _params(features, queries, embedding)
    size = h.shape[-2:]
    h = h.flatten(2).transpose(1, 2)  # (B, HW, hidden)
    for j, cin, cout, w, bias in _layers(params, b, q):
        if j == 0:
            h = torch.baddbmm(bias.reshape(b, 1, q * cout), h, w.reshape(b, q * cout, cin).transpose(1, 2))
        else:
            h = (torch.einsum("bpqi,bqoi->bpqo", h.reshape(b, -1, q, cin), w) + bias.reshape(b, 1, q, cout)).reshape(b, -1, q * cout)
        if j < len(clf.sizes) - 1:
            h = F.relu(h)
    return h.reshape(b, *size, q).permute(0, 3, 1, 2)


def step(fn):
    def run():
        features.grad = None
        clf.zero_grad(set_to_none=True)
        out = fn(features, queries, embedding)
        (0.1 * out).sum().backward()
        return out, features.grad.clone()
    return run


fns = {"shipped": step(clf), "grouped": step(grouped), "pixels_major": step(pixels_major)}
ref_out, ref_grad = fns["shipped"]()
rows = {}
for name in ("grouped", "pixels_major"):
    out, grad = fns[name]()
    rows[name] = {"max_logit_diff": (out - ref_out).abs().max().item(), "max_grad_diff": (grad - ref_grad).abs().max().item()}
t = interleaved(fns, int(sys.argv[1]) if len(sys.argv) > 1 else 5)
print(json.dumps({"threads": 1, "median_ms": {k: round(statistics.median(v), 1) for k, v in t.items()}, "equivalence": rows}, indent=1))
