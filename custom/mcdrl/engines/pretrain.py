"""Pretraining of the demo CLIP on the synthetic world (the embedded default backbone).

No pretrained CLIP can be downloaded here, and random CLIP weights would make every prompt meaningless. So the demo
CLIP is trained from scratch on generated (image, caption) pairs drawn from :data:`mcdrl.synthetic.GENERIC_MIXTURE`
(every confounder at a moderate rate; never the site mixtures: a real CLIP saw every imaging mode on the web, but
never our sites), with two terms:

* open_clip's own image-caption contrastive loss (``open_clip.ClipLoss``);
* [ours] a dense patch-text alignment term using the generator's masks: each patch's dense feature (read out through
  the same MaskCLIP value path that MTRS uses) is classified over the prompts {"A {class} in an endoscopic image"}_k
  plus "Normal mucosa in an endoscopic image": lesion patches towards their class, background patches inside the
  field of view towards normal mucosa. Real CLIPs have the weak localisation that MTRS relies on; this term gives
  the demo CLIP the same property reliably;
* [ours] image-level prompt terms (``prompt_weight``), with the exact prompts that MTRS and the dictionary use:
  the pooled image embedding is classified over the same K + 1 class prompts (its lesion class, or normal mucosa
  when there is none), and for each of the 12 confounders, cos(image, "An endoscopy image with {z}") minus
  cos(image, "An endoscopy image") is a logit for whether z was rendered (binary cross-entropy). A caption names the
  lesion among up to six confounders; on its own the contrastive loss learned the class slowly (27% zero-shot after
  280 steps) and did not learn motion blur (presence AUC 0.56 after 950 steps; see ``mcdrl.evaluation.clip_probe``'s pixel
  baseline for how visible the cue is).

The result is an ordinary open_clip weights file (``.safetensors``) that the configs point to, exactly as a user
points them at OpenAI or BiomedCLIP weights. Run it as the bundle workflow ``bundle/configs/pretrain_clip.json``.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from mcdrl.networks.clip_backbone import CLIPVisualBackbone, create_clip
from mcdrl.networks.prompts import BACKGROUND_PROMPT, CLASS_TEMPLATE, CONFOUNDER_TEMPLATE, CONFOUNDERS, LESION_CLASSES

#: the neutral prompt of the confounder presence term (the one :mod:`mcdrl.evaluation.clip_probe` scores presence against)
NEUTRAL_PROMPT = "An endoscopy image"
from mcdrl.utils import atomic_path

__all__ = ["CaptionPool", "CLIPPretrainer"]

logger = logging.getLogger("mcdrl.engines.pretrain")


def _render(args) -> tuple:
    """Render one generic-mixture case for the pool: (image (3, S, S) uint8, lesion fraction (g, g), class, FOV (g, g),
    caption, confounder presence (12,) uint8 in :data:`mcdrl.networks.prompts.CONFOUNDERS` order)."""
    seed, image_size, grid, render_size = args
    from mcdrl.synthetic import GENERIC_MIXTURE, sample_case

    case = sample_case(GENERIC_MIXTURE, seed=seed, size=render_size)
    # rendered at the data's size, resized to the CLIP's input exactly as MCDRLNet does at run time
    img = torch.from_numpy(case.image).permute(2, 0, 1).float()[None] / 255.0
    img = F.interpolate(img, size=[image_size] * 2, mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)
    frac = F.adaptive_avg_pool2d(torch.from_numpy(case.mask).float()[None, None], grid)[0, 0]
    fov = F.adaptive_avg_pool2d((torch.from_numpy(case.image).float().sum(-1) > 30).float()[None, None], grid)[0, 0]
    cls = LESION_CLASSES.index(case.lesion_class) if case.lesion_class in LESION_CLASSES else -1
    # numpy, not torch: tensors returned from pool workers travel as shared-memory file descriptors, which run out
    present = np.array([c in case.confounders for c in CONFOUNDERS], np.uint8)
    return (img * 255).round().to(torch.uint8).numpy(), frac.numpy(), cls, fov.numpy(), case.caption, present


class CaptionPool(Dataset):
    """A fixed pool of generated cases from :data:`mcdrl.synthetic.GENERIC_MIXTURE`, rendered once (in parallel)
    and reused over epochs with random flips: generation costs about half a training step per image, so a pool
    trains faster than an endless stream at equal steps.

    Items: image (3, S, S) float [0, 1], lesion fraction (g, g), class index (-1 = none), FOV fraction (g, g), caption,
    confounder presence (12,) float.
    """

    def __init__(self, size: int, seed: int, image_size: int, grid: int, render_size: int = 224, processes: int = 2):
        import multiprocessing as mp

        jobs = [(seed * 1_000_003 + i, image_size, grid, render_size) for i in range(size)]
        with mp.get_context("fork").Pool(processes, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            items = pool.map(_render, jobs, chunksize=64)
        self.images = torch.from_numpy(np.stack([it[0] for it in items]))
        self.frac = torch.from_numpy(np.stack([it[1] for it in items]))
        self.cls = torch.tensor([it[2] for it in items])
        self.fov = torch.from_numpy(np.stack([it[3] for it in items]))
        self.captions = [it[4] for it in items]
        self.present = torch.from_numpy(np.stack([it[5] for it in items])).float()

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int):
        img, frac, fov = self.images[i].float() / 255.0, self.frac[i], self.fov[i]
        flips = [d for d, f in ((-1, torch.rand(()) < 0.5), (-2, torch.rand(()) < 0.5)) if f]
        if flips:
            img, frac, fov = img.flip(flips), frac.flip(flips), fov.flip(flips)
        return img, frac, int(self.cls[i]), fov, self.captions[i], self.present[i]


class CLIPPretrainer:
    """Train an open_clip config from scratch on the synthetic stream and save its weights.

    Args:
        model_name: open_clip config (default our ``mcdrl-demo-vit``).
        output_path: the ``.safetensors`` weights file to write (atomically).
        steps: optimisation steps. batch_size: images per step. pool_size: generated cases, reused with flips. lr: AdamW peak lr (cosine, 5% warm-up).
        dense_weight: weight of the dense patch-text term (0 = plain image-level contrastive pretraining).
        prompt_weight: weight of the image-level prompt terms, class and confounder presence (0 = off).
        presence_weights: per-confounder weights w_z of the presence term, ``(1/C) sum_z w_z BCE_z`` (default 1 each).
            A cue that only removes texture is learned last: at weight 1 the v0.2 CLIP never learned motion blur
            (presence AUC 0.55). The bundle config sets ``{"motion blur": 25}``, blur's term at about twice the class
            term; 97 (8x) learned blur (AUC 1.00) but cost the lesion-class prompts 14 points (70% -> 57% top-1).
        seed: pool and init seed. num_workers: processes rendering the pool. bf16: bf16 autocast (off by default: on this
            CPU it was 5-8x slower than fp32 in backward).
        log_every: steps between log lines.
        save_dtype: dtype of the saved floating-point weights (``"float16"`` halves the shipped file; open_clip loads
            it into an fp32 model).
    """

    def __init__(self, model_name: str = "mcdrl-demo-vit", output_path: str = "mcdrl-demo-vit.safetensors", steps: int = 600, batch_size: int = 64,
                 pool_size: int = 12000, lr: float = 1e-3, dense_weight: float = 1.0, prompt_weight: float = 0.0, seed: int = 0, num_workers: int = 1, bf16: bool = False, log_every: int = 20, device: str = "cpu",
                 save_dtype: str = "float32", presence_weights: dict[str, float] | None = None):
        self.model_name, self.output_path = model_name, Path(output_path)
        self.pool_size = int(pool_size)
        self.save_dtype = getattr(torch, save_dtype)
        self.steps, self.batch_size, self.lr, self.dense_weight = int(steps), int(batch_size), float(lr), float(dense_weight)
        self.prompt_weight = float(prompt_weight)
        unknown = sorted(set(presence_weights or {}) - set(CONFOUNDERS))
        if unknown:
            raise ValueError(f"presence_weights names unknown confounders {unknown}; known: {CONFOUNDERS}")
        self.presence_weights = torch.tensor([float((presence_weights or {}).get(c, 1.0)) for c in CONFOUNDERS])
        self.seed, self.num_workers, self.bf16, self.log_every, self.device = int(seed), int(num_workers), bool(bf16), int(log_every), torch.device(device)

    def _lr(self, step: int) -> float:
        warm = max(1, int(0.05 * self.steps))
        if step < warm:
            return self.lr * (step + 1) / warm
        return 0.5 * self.lr * (1 + math.cos(math.pi * (step - warm) / max(1, self.steps - warm)))

    def run(self) -> Path:
        import open_clip

        torch.manual_seed(self.seed)
        clip = create_clip(self.model_name, None).to(self.device).train()
        tokenizer = open_clip.get_tokenizer(self.model_name)
        dense = CLIPVisualBackbone(self.model_name, readout="maskclip", clip=clip).to(self.device)  # shares clip.visual
        k = len(LESION_CLASSES)
        prompts = tokenizer([CLASS_TEMPLATE.format(cls=c) for c in LESION_CLASSES] + [BACKGROUND_PROMPT]
                            + [CONFOUNDER_TEMPLATE.format(domain=c) for c in CONFOUNDERS] + [NEUTRAL_PROMPT]).to(self.device)
        loss_fn = open_clip.ClipLoss()
        decay = [p for n, p in clip.named_parameters() if p.ndim >= 2 and "embedding" not in n]
        no_decay = [p for n, p in clip.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=self.lr, betas=(0.9, 0.98), eps=1e-6)
        t0 = time.time()
        pool = CaptionPool(self.pool_size, self.seed, dense.image_size, dense.grid_size, processes=max(1, self.num_workers))
        logger.info("rendered a pool of %d cases in %.0f s", len(pool), time.time() - t0)
        loader = DataLoader(pool, batch_size=self.batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(self.seed))
        t0 = time.time()
        batches = iter(())
        for step in range(self.steps):
            batch = next(batches, None)
            if batch is None:
                batches = iter(loader)
                batch = next(batches)
            img, frac, cls, fov, captions, present = batch
            img, frac, cls, fov, present = (t.to(self.device) for t in (img, frac, cls, fov, present))
            text = tokenizer(list(captions)).to(self.device)
            for g in opt.param_groups:
                g["lr"] = self._lr(step)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                tokens, pooled = dense.forward_tokens(img)
                txt = clip.encode_text(torch.cat([text, prompts]))
                cap_emb, prompt_emb = txt[: len(captions)], txt[len(captions):]
                prompt_emb, conf_emb, neutral_emb = prompt_emb[: k + 1], prompt_emb[k + 1: -1], prompt_emb[-1:]
                scale = clip.logit_scale.exp()
                l_img = loss_fn(F.normalize(pooled.float(), dim=-1), F.normalize(cap_emb.float(), dim=-1), scale)
                l_dense = self._dense_loss(tokens.float(), prompt_emb.float(), frac, cls, fov, scale)
                loss = l_img + self.dense_weight * l_dense
                l_prompt = torch.zeros(())
                if self.prompt_weight:
                    l_prompt = self._prompt_loss(pooled.float(), prompt_emb.float(), conf_emb.float(), neutral_emb.float(), cls, present, scale,
                                                 self.presence_weights.to(self.device))
                    loss = loss + self.prompt_weight * l_prompt
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                clip.logit_scale.clamp_(0, math.log(100))
            if step % self.log_every == 0 or step == self.steps - 1:
                rate = (step + 1) * self.batch_size / (time.time() - t0)
                logger.info("step %d/%d loss %.4f (image %.4f, dense %.4f, prompt %.4f) lr %.2e, %.1f img/s, %.1f min", step + 1, self.steps, loss.item(), l_img.item(),
                            l_dense.item(), l_prompt.item(), self._lr(step), rate, (time.time() - t0) / 60)
        clip.eval()
        from safetensors.torch import save_file

        with atomic_path(self.output_path) as tmp:
            save_file({k: _cast(v.detach().cpu(), self.save_dtype) for k, v in clip.state_dict().items()}, str(tmp))
        logger.info("wrote %s after %d steps (%.1f min)", self.output_path, self.steps, (time.time() - t0) / 60)
        return self.output_path

    @staticmethod
    def _prompt_loss(pooled, class_emb, conf_emb, neutral_emb, cls, present, scale, weights=None) -> torch.Tensor:
        """Image-level prompt terms: CE over K class prompts + background, plus BCE of confounder presence.

        pooled (B, d); class_emb (K + 1, d); conf_emb (C, d); neutral_emb (1, d); cls (B,) (-1 = no lesion -> background);
        present (B, C) in {0, 1}; weights (C,) per-confounder weights (None = 1 each).
        Presence logit of z: scale * (cos(image, prompt_z) - cos(image, neutral)).
        """
        img = F.normalize(pooled, dim=-1)
        k = class_emb.shape[0] - 1
        l_cls = F.cross_entropy(img @ F.normalize(class_emb, dim=-1).t() * scale, torch.where(cls >= 0, cls, k))
        pres = (img @ F.normalize(conf_emb, dim=-1).t() - img @ F.normalize(neutral_emb, dim=-1).t()) * scale
        return l_cls + F.binary_cross_entropy_with_logits(pres, present.float(), weight=None if weights is None else weights[None])

    @staticmethod
    def _dense_loss(tokens, prompt_emb, frac, cls, fov, scale) -> torch.Tensor:
        """Patch classification over K class prompts + the background prompt.

        tokens (B, L, d); prompt_emb (K + 1, d); frac, fov (B, g, g) lesion / field-of-view fractions; cls (B,).
        Lesion patches (frac >= 0.5) -> their class; background patches (frac == 0, inside the FOV) -> background.
        """
        b, L, _ = tokens.shape
        logits = F.normalize(tokens, dim=-1) @ F.normalize(prompt_emb, dim=-1).t() * scale  # (B, L, K+1)
        k = prompt_emb.shape[0] - 1
        frac, fov = frac.reshape(b, L), fov.reshape(b, L)
        target = torch.full((b, L), -100, dtype=torch.long, device=tokens.device)
        target[(frac == 0) & (fov > 0.9)] = k
        lesion = (frac >= 0.5) & (cls[:, None] >= 0)
        target[lesion] = cls[:, None].expand(b, L)[lesion]
        # balance: lesion patches are rare, weight the two kinds equally
        w = torch.ones(k + 1, device=tokens.device)
        n_les, n_bg = int(lesion.sum()), int((target == k).sum())
        if n_les and n_bg:
            w[:k] = n_bg / n_les
        return F.cross_entropy(logits.reshape(b * L, -1), target.reshape(-1), weight=w, ignore_index=-100)



def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (t.to(dtype) if t.is_floating_point() else t).contiguous()
