"""The runs of the parent predictors (teacher and judge; made by :mod:`cfcl.counterfactual.predictors`).
"""
from __future__ import annotations

import dataclasses

from cfcl.config import Profile
from cfcl.data import data_run
from cfcl.paths import runs_dir
from cfcl.runs import Run
from cfcl.views import AugmentConfig


#: The predictors' geometric augmentation: the views' rotation, zoom and shift (cfcl.views), milder
#: (the whole chest stays in view), and horizontal flips (no parent depends on the side).
AUGMENT = AugmentConfig(rotation_deg=10.0, scale=(1.0, 1.25), translate=0.06, flip_p=0.5, jitter_p=0.0,
                        blur_p=0.0, solarize_p=0.0)


#: The views' photometric augmentation (colour jitter, blur, solarisation; cfcl.views defaults).
PHOTOMETRIC = AugmentConfig()


#: Share of each batch that also gets :data:`PHOTOMETRIC` with ``hvae.classifier_augment="views"``.
PHOTOMETRIC_SHARE = 0.5


ROLES = {"teacher": "parents", "judge": "judge"}  # role -> the run's label


def classifier_run(profile: Profile, role: str = "teacher", lr: float = 1e-3) -> Run:
    """The parent predictors' run (``classifiers.pt``) of ``role`` (``teacher`` or ``judge``, see
    :mod:`cfcl.counterfactual.predictors`); its key covers the settings below and the data. Width and epochs are the role's own: ``hvae.classifier_width`` and ``hvae.classifier_epochs`` for the teacher, ``hvae.judge_width`` and
    ``hvae.judge_epochs`` for the judge."""
    if role not in ROLES:
        raise ValueError(f"unknown predictor role {role!r}; choose one of {list(ROLES)}")
    hv = profile.hvae
    aug = hv.classifier_augment
    judge = role == "judge"
    settings = dict(epochs=hv.judge_epochs if judge else hv.classifier_epochs, batch_size=hv.batch_size,
                    width=hv.judge_width if judge else hv.classifier_width, lr=lr,
                    balance="scanner_x_effusion", augment=aug,
                    geometry=dataclasses.asdict(AUGMENT) if aug != "none" else None,
                    photometric=(dict(dataclasses.asdict(PHOTOMETRIC), share=PHOTOMETRIC_SHARE) if aug == "views"
                                 else None),
                    image_size=profile.data.image_size, seed=profile.seed)
    if judge:
        settings.update(role="judge", exact_counterfactuals=True, seed_offset=1)
    return Run("classifiers", ROLES[role], settings, runs_dir(profile.name), {"data": data_run(profile, "pretrain")},
               remake=f"python -m cfcl.counterfactual.predictors {profile.cli()}{' --role judge' if role == 'judge' else ''}"
                      f"  (or: make hvae {profile.make_args()})")
