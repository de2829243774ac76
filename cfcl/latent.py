"""Latent-space analysis of the pre-trained embeddings, before fine-tuning (paper section 4.1).

Table 1: K-means (3 clusters) purity against the silver labels and d/sigma (inter-class
distance over intra-class spread, see :func:`cfcl.metrics.d_over_sigma`) of the network's
output pixel embeddings (the dense projection head). Figure 2: CHRO-maps of the same
embeddings (:mod:`cfcl.chromap`). Images come from the validation split, never seen during
pre-training; ``latent.pixels_per_image`` pixels are drawn uniformly per image (seeded).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from cfcl import chromap, metrics
from cfcl.config import Profile
from cfcl.data import load_split
from cfcl.models import build_model
from cfcl.pretrain import load_checkpoint, pretrain


def embeddings(profile: Profile, method: str, split: str = "val", n_images: int | None = None) -> dict[str, np.ndarray]:
    """Dense embeddings of ``n_images`` images of ``split`` under the pre-trained ``method``.

    Returns ``emb`` (N, D, H, W) float32, ``images`` (N, H, W) uint8 and ``silver`` (N, H, W).
    """
    n = n_images or profile.latent.n_images
    data = load_split(profile, split)
    n = min(n, len(data))
    checkpoint = pretrain(profile, method, progress=False)  # trains first if needed
    net = build_model(profile.pretrain.encoder, profile.pretrain.embed_dim)
    net.load_state_dict(load_checkpoint(checkpoint)["model"])
    net.eval()
    images = np.asarray(data.images[:n])
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    with torch.no_grad():
        emb = torch.cat([net.embed(x[i:i + 16]) for i in range(0, n, 16)]).numpy()
    return {"emb": emb, "images": images, "silver": np.asarray(data.silver[:n])}


def sample_pixels(emb: np.ndarray, labels: np.ndarray, per_image: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``per_image`` pixels per image: embeddings (M, D) and their labels (M,)."""
    rng = np.random.default_rng(seed)
    N, D, H, W = emb.shape
    flat = emb.reshape(N, D, H * W)
    zs, ys = [], []
    for i in range(N):
        idx = rng.choice(H * W, size=min(per_image, H * W), replace=False)
        zs.append(flat[i][:, idx].T)
        ys.append(labels[i].reshape(-1)[idx])
    return np.concatenate(zs), np.concatenate(ys)


def latent_metrics(profile: Profile, method: str) -> dict[str, float]:
    """Table 1's two numbers for one method: ``d_over_sigma`` and ``purity``."""
    e = embeddings(profile, method)
    z, y = sample_pixels(e["emb"], e["silver"], profile.latent.pixels_per_image, profile.seed)
    return {"d_over_sigma": metrics.d_over_sigma(z, y), "purity": metrics.kmeans_purity(z, y, k=3, seed=profile.seed)}


def latent_table(profile: Profile, methods: list[str]) -> pd.DataFrame:
    """Table 1 for ``methods`` (rows), beside the paper's published values."""
    from cfcl.plots.latent import latent_table as _table

    return _table({m: tuple(latent_metrics(profile, m).values()) for m in methods})


def chromaps(profile: Profile, methods: list[str], n_images: int = 4) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """CHRO-maps (N, H, W, 3) of the first ``n_images`` validation images for every method."""
    maps, images = {}, None
    for m in methods:
        e = embeddings(profile, m, n_images=n_images)
        images = e["images"]
        maps[m] = chromap.chromap(e["emb"], n_neighbors=profile.latent.umap_neighbors, seed=profile.seed)
    return images, maps
