"""The methods of the paper's Tables 1 and 2: one record per method, the one registry.

Everything that varies with the method lives here: which views pre-training builds, how pixels
pair up (the loss), whether silver labels are used, which parts of the pre-trained U-Net
initialise fine-tuning, the display name and group of Table 2, and the published numbers.

=========  ====================================  =========================  ======  ==================
method     views                                 loss (:mod:`cfcl.losses`)  labels  transferred
=========  ====================================  =========================  ======  ==================
none       -                                     - (random init)            -       -
simclr     2 ordinary augmentations of x         SimCLR (global NT-Xent)    -       encoder
vader      2 ordinary augmentations of x         DenseNTXent (VADeR)        -       encoder + decoder
dvd_cl     x + do(sc), do(pe), do(sc, pe)        DVDCL (anchor = x)         -       encoder + decoder
mvd_cl     x + 3 counterfactuals                 MVDCL (all views at once)  -       encoder + decoder
chexmask   1 augmentation of x                   cross-entropy on silver    silver  encoder + decoder
ssdcl      2 ordinary augmentations of x         SSDCL (Hu et al. 2021)     silver  encoder + decoder
s_dvd_cl   x + 3 counterfactuals                 SDVDCL                     silver  encoder + decoder
s_mvd_cl   x + 3 counterfactuals                 SMVDCL                     silver  encoder + decoder
=========  ====================================  =========================  ======  ==================

Losses are named, not imported, so this module is plain Python: ``python3 -m cfcl.methods``
prints the lists the Makefile needs without the project's environment.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

TABLE2_COLUMNS = ("DSC", "DSC_NF", "DSC_PE", "HD95", "ASD")


@dataclass(frozen=True)
class Method:
    """One row of Table 2.

    ``views``: "cf" (x + the 3 counterfactuals), "two" (two ordinary augmentations of x), "one",
    or "" (no pre-training); ``pairing``: "dual", "multi", "global", "segmentation" or "";
    ``loss``: a class name in :mod:`cfcl.losses` (None: cross-entropy or no pre-training);
    ``negatives``: a fixed negatives scope (None: ``pretrain.negatives``); ``transfer``: the
    parameter prefixes that initialise the fine-tuned U-Net; ``table2``: the paper's
    (mean, std) per column of Table 2; ``table1``: the paper's (d/sigma, purity), proposed only.
    """

    name: str
    display: str
    group: str
    views: str
    pairing: str
    supervised: bool
    loss: str | None
    transfer: tuple[str, ...]
    table2: dict[str, tuple[float, float]]
    proposed: bool = False
    negatives: str | None = None
    table1: tuple[float, float] | None = None

    @property
    def pretrained(self) -> bool:
        return bool(self.views)


def _t2(*values: float) -> dict[str, tuple[float, float]]:
    pairs = [(values[i], values[i + 1]) for i in range(0, len(values), 2)]
    return dict(zip(TABLE2_COLUMNS, pairs))


WHOLE = ("unet.encoder.", "unet.decoder.")

#: The registry, in the order of the paper's Table 2 (paper section 4.2).
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("none", "None", "", "", "", False, None, (),
           _t2(87.05, 4.34, 93.59, 1.28, 84.76, 1.28, 21.9, 8.0, 5.39, 2.05)),
    Method("simclr", "SimCLR", "Unsupervised", "two", "global", False, "SimCLR", ("unet.encoder.",),
           _t2(90.90, 2.94, 96.71, 0.28, 88.61, 4.15, 11.9, 5.3, 3.64, 1.63)),
    Method("vader", "VADeR", "Unsupervised", "two", "dual", False, "DenseNTXent", WHOLE,
           _t2(92.26, 2.66, 97.22, 0.16, 90.33, 3.68, 10.4, 3.7, 2.79, 1.14)),
    Method("dvd_cl", "DVD-CL", "Unsupervised", "cf", "dual", False, "DVDCL", WHOLE,
           _t2(92.76, 2.23, 97.36, 0.14, 91.08, 3.18, 10.5, 3.6, 2.86, 1.04), proposed=True,
           table1=(0.83, 0.6979)),
    Method("mvd_cl", "MVD-CL", "Unsupervised", "cf", "multi", False, "MVDCL", WHOLE,
           _t2(92.27, 2.73, 97.18, 0.25, 90.36, 3.79, 9.1, 4.9, 2.61, 1.16), proposed=True,
           table1=(1.39, 0.6391)),
    Method("chexmask", "CheXMask", "Supervised", "one", "segmentation", True, None, WHOLE,
           _t2(93.65, 2.33, 97.81, 0.20, 92.02, 3.23, 7.3, 1.8, 2.46, 1.26)),
    # SSDCL draws its negatives from the whole batch, as Hu et al. do (REFERENCES section 5).
    Method("ssdcl", "SSDCL", "Supervised", "two", "multi", True, "SSDCL", WHOLE,
           _t2(92.91, 2.77, 97.58, 0.17, 91.10, 3.84, 15.3, 5.0, 3.31, 1.20), negatives="batch"),
    Method("s_dvd_cl", "S-DVD-CL", "Supervised", "cf", "dual", True, "SDVDCL", WHOLE,
           _t2(93.15, 2.61, 97.62, 0.11, 91.43, 3.65, 8.0, 3.9, 2.96, 1.97), proposed=True,
           table1=(17.07, 0.9581)),
    Method("s_mvd_cl", "S-MVD-CL", "Supervised", "cf", "multi", True, "SMVDCL", WHOLE,
           _t2(93.93, 1.92, 97.75, 0.09, 92.43, 2.67, 7.3, 3.4, 2.05, 0.74), proposed=True,
           table1=(12.16, 0.9705)),
)}

#: The nine rows of Table 2; the eight pre-training methods; the four proposed ones (Table 1).
FINETUNE_METHODS = tuple(METHODS)
PRETRAIN_METHODS = tuple(m for m in METHODS if METHODS[m].pretrained)
PROPOSED = tuple(m for m in METHODS if METHODS[m].proposed)
#: The methods whose views include counterfactuals (their pre-training waits for notebook 02).
COUNTERFACTUAL = tuple(m for m in PRETRAIN_METHODS if METHODS[m].views == "cf")


def get(name: str, pretrained: bool = False) -> Method:
    """The record of ``name``; ``pretrained=True`` also refuses ``none``. Errors list the choices."""
    choices = PRETRAIN_METHODS if pretrained else FINETUNE_METHODS
    if name not in choices:
        raise KeyError(f"unknown method {name!r}; choose one of {list(choices)}")
    return METHODS[name]


def select(methods: str | list[str] | tuple[str, ...], among: tuple[str, ...] = FINETUNE_METHODS) -> tuple[str, ...]:
    """The methods of ``among`` named in ``methods`` (a space- or comma-separated text, or a list), in
    the registry's order; an empty text is all of ``among``. Unknown names are an error that lists the
    choices; names of other lists (e.g. ``none`` where only the proposed methods apply) are dropped.
    The notebooks' ``methods`` parameter (``make reproduce ONLY="none dvd_cl"``) goes through here."""
    names = methods.replace(",", " ").split() if isinstance(methods, str) else list(methods)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise KeyError(f"unknown method(s) {unknown}; choose among {list(FINETUNE_METHODS)}")
    return tuple(among) if not names else tuple(m for m in among if m in names)


def main(argv: list[str] | None = None) -> None:
    """``python3 -m cfcl.methods pretrain|finetune|proposed|counterfactual``: the names, space-separated."""
    what = (argv if argv is not None else sys.argv[1:]) or ["finetune"]
    lists = {"pretrain": PRETRAIN_METHODS, "finetune": FINETUNE_METHODS, "proposed": PROPOSED,
             "counterfactual": COUNTERFACTUAL}
    if what[0] not in lists:
        raise SystemExit(f"usage: python -m cfcl.methods {'|'.join(lists)}")
    print(" ".join(lists[what[0]]))


if __name__ == "__main__":
    main()
