"""Latent-space analysis of the pre-trained embeddings, before fine-tuning (paper section 4.1).

Table 1: K-means (3 clusters) purity against the silver labels and d/sigma (inter-class
distance over intra-class spread, see :func:`cfcl.metrics.d_over_sigma`) of the network's
output pixel embeddings (the dense projection head). Figure 2: CHRO-maps of the same
embeddings (:mod:`cfcl.chromap`). Images come from the validation split, never seen during
pre-training.

Pixels are drawn **class-balanced** (our choice; the paper does not say how it samples): equal
numbers of background, right-lung and left-lung pixels per image (``latent.pixels_per_image`` in
all), seeded. Drawn uniformly, three quarters of a chest radiograph's pixels are background, so
a clustering that puts every pixel in background-majority clusters already scores a purity of
0.76: purity would measure the background share, not the embedding. With balanced classes the
floor of purity is 1/3, and normalised mutual information (NMI) is reported beside it.

Beyond the paper, :func:`invariance` measures what counterfactual views are meant to teach: the
cosine similarity of a pixel's embedding in ``x`` and in its exact counterfactual (the phantom),
inside and outside the region the intervention changes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from cfcl import chromap, metrics
from cfcl.config import INTERVENTIONS, Profile
from cfcl.data import load_split
from cfcl.methods import METHODS
from cfcl.models import network
from cfcl.read.pretrain import load_pretrained_state
from cfcl.results import changed_regions


def embeddings(profile: Profile, method: str, split: str = "val", n_images: int | None = None) -> dict[str, np.ndarray]:
    """Dense embeddings of ``n_images`` images of ``split`` under the pre-trained ``method``.

    Returns ``emb`` (N, D, H, W) float32, ``images`` (N, H, W) uint8 and ``silver`` (N, H, W).
    """
    n = n_images or profile.latent.n_images
    data = load_split(profile, split)
    n = min(n, len(data))
    net = network(profile.pretrain)
    net.load_state_dict(load_pretrained_state(profile, method))  # verified; never trained here
    net.eval()
    images = np.asarray(data.images[:n])
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    with torch.no_grad():
        emb = torch.cat([net.embed(x[i:i + 16]) for i in range(0, n, 16)]).numpy()
    return {"emb": emb, "images": images, "silver": np.asarray(data.silver[:n])}


def sample_pixels(emb: np.ndarray, labels: np.ndarray, per_image: int, seed: int = 0,
                  balanced: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``per_image`` pixels per image: embeddings (M, D) and their labels (M,).

    ``balanced``: ``per_image // K`` pixels of each of the K classes present in the image (fewer
    where a class has fewer pixels); else uniformly over the image."""
    rng = np.random.default_rng(seed)
    N, D, H, W = emb.shape
    flat = emb.reshape(N, D, H * W)
    zs, ys = [], []
    for i in range(N):
        lab = labels[i].reshape(-1)
        if balanced:
            classes = np.unique(lab)
            k = max(1, per_image // len(classes))
            idx = np.concatenate([rng.choice(np.flatnonzero(lab == c), size=min(k, int((lab == c).sum())),
                                             replace=False) for c in classes])
        else:
            idx = rng.choice(H * W, size=min(per_image, H * W), replace=False)
        zs.append(flat[i][:, idx].T)
        ys.append(lab[idx])
    return np.concatenate(zs), np.concatenate(ys)


def latent_metrics(profile: Profile, method: str) -> dict[str, float]:
    """Table 1 for one method on class-balanced pixels: ``d_over_sigma``, K-means ``purity`` and
    ``nmi`` (normalised mutual information of the K-means clusters and the silver labels)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    e = embeddings(profile, method)
    z, y = sample_pixels(e["emb"], e["silver"], profile.latent.pixels_per_image, profile.seed)
    zn = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    clusters = KMeans(n_clusters=3, n_init=10, random_state=profile.seed).fit_predict(zn)
    return {"d_over_sigma": metrics.d_over_sigma(z, y), "purity": metrics.purity(clusters, y),
            "nmi": float(normalized_mutual_info_score(y, clusters))}


def latent_table(profile: Profile, methods: list[str], digits: int = 4) -> pd.DataFrame:
    """Table 1 for ``methods`` beside the paper's published values: index = method (display
    name), columns ``d/σ``, ``purity``, ``NMI``, ``d/σ (paper)``, ``purity (paper)`` (nan where the
    paper has none; the paper sampled its pixels in a way it does not state)."""
    rows = []
    for m in methods:
        value = latent_metrics(profile, m)
        paper = METHODS[m].table1 or (np.nan, np.nan)
        rows.append({"method": METHODS[m].display, "d/σ": value["d_over_sigma"], "purity": value["purity"],
                     "NMI": value["nmi"], "d/σ (paper)": paper[0], "purity (paper)": paper[1]})
    return pd.DataFrame(rows).set_index("method").round(digits)


def chromaps(profile: Profile, methods: list[str], n_images: int | None = None
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """CHRO-maps (N, H, W, 3) of the first ``n_images`` (default ``latent.chromap_images``)
    validation images for every method; UMAP fitted on ``latent.umap_fit`` of their pixels."""
    maps, images = {}, None
    lt = profile.latent
    for m in methods:
        e = embeddings(profile, m, n_images=n_images or lt.chromap_images)
        images = e["images"]
        maps[m] = chromap.chromap(e["emb"], n_fit=lt.umap_fit, n_neighbors=lt.umap_neighbors, seed=profile.seed)
    return images, maps


def invariance(profile: Profile, method: str, n_images: int | None = None) -> pd.DataFrame:
    """Cosine similarity of each pixel's embedding in ``x`` and in its exact counterfactual under
    every intervention, averaged over the pixels inside and outside the changed region (the
    effusion region of either image; for do(scanner) the whole image is "outside"), over the first
    ``n_images`` (default ``latent.n_images``) validation images. One row per intervention with
    ``inside``, ``outside`` and ``n_inside`` (pixels). Needs exact counterfactuals (the phantom)."""
    n = n_images or profile.latent.n_images
    data = load_split(profile, "val")
    if data.counterfactuals is None:
        raise ValueError(f"data.source={profile.data.source!r} has no exact counterfactuals to measure invariance")
    n = min(n, len(data))
    net = network(profile.pretrain)
    net.load_state_dict(load_pretrained_state(profile, method))
    net.eval()

    def embed(images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(images, np.float32) / 255.0)[:, None]
        with torch.no_grad():
            e = torch.cat([net.embed(x[i:i + 16]) for i in range(0, len(x), 16)])
        return torch.nn.functional.normalize(e, dim=1)

    base = embed(data.images[:n])
    regions = changed_regions(profile, "val")[:n]
    rows = []
    for j, iv in enumerate(INTERVENTIONS):
        cos = (base * embed(data.counterfactuals[:n, j])).sum(1).numpy()  # (N, H, W)
        inside = regions[:, j]
        rows.append({"method": method, "intervention": iv,
                     "inside": float(cos[inside].mean()) if inside.any() else float("nan"),
                     "outside": float(cos[~inside].mean()), "n_inside": int(inside.sum())})
    return pd.DataFrame(rows)


def invariance_table(profile: Profile, methods: list[str] | tuple[str, ...]) -> pd.DataFrame | None:
    """:func:`invariance` of every method in one table (columns method, intervention, inside, outside,
    n_inside; the method by its display name), or None where the data has no exact counterfactuals."""
    if profile.data.source != "phantom":
        return None
    out = pd.concat([invariance(profile, m) for m in methods], ignore_index=True)
    out["method"] = out["method"].map(lambda m: METHODS[m].display)
    return out

