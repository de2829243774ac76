"""The phantom: a structural causal model (SCM) of PA chest radiographs with exact counterfactuals.

Causal graph (the paper's parents, section 2.1; ``U`` = exogenous noise, one draw per image)::

    sex, scanner, effusion  ~  the real PadChest joint (scanner and effusion confounded)

    anatomy      A = f_A(sex, U_anatomy)          lungs, hidden lung, bones, soft tissue, devices
    fluid        F = f_F(A, U_effusion)           potential pleural fluid, drawn for every image
    attenuation  D = base(A) - air(A) (1 - effusion F)
    image        x = f_x(D, scanner, U_acquisition)
    gold         G = outline(A)                   never depends on scanner or effusion
    silver       S = (outline(A) + error(A, U_silver)) minus {effusion F >= cut(U_silver)}
    quality      q = f_q(Dice(S, G), U_quality)   a Dice-RCA-like score

Mechanisms and the noise fields they read (:data:`~cfcl.data.phantom.scm.NOISE_SPEC`; details in
the docstrings of :mod:`~cfcl.data.phantom.render`):

- **lung outline**: one of the 355 real lung shapes of the bank (``shape``, :mod:`cfcl.data.anatomy`)
  placed in a thorax scaled by sex and ``habitus``, moved (``shift``), deformed (``deform``), with
  independent hemidiaphragm heights (``dome``), inspiration depth (``inspiration``), in-plane tilt
  (``tilt``) and rotation about the vertical axis (``rotation``);
- **hidden lung**: lung that continues behind the heart and into the posterior costophrenic
  recesses below the domes (``hidden``): its air darkens the image outside the gold outline, so
  the medial and inferior borders are shallow steps; the lung periphery thins over ``edge``;
  vessel texture (``tex_seed``);
- **soft tissue is water-equivalent**: the heart, mediastinum, diaphragm and pleural fluid are seen
  only where they displace lung air, which is why fluid silhouettes the heart border and the dome;
- **bone and soft-tissue overlays**: posterior and anterior ribs (``rib_phase``, ``rib_spacing``),
  clavicles, scapulae over the upper lateral field (``scapula``), pectoral muscles (``pectoral``),
  breasts (``breast``, women), a gastric air bubble under the left dome (``gastric``);
- **support devices** (``devices``, ``ecg``, ``lines``): ECG electrodes and leads, central line,
  nasogastric tube, pacemaker, endotracheal tube, crossing the lungs, independent of the parents;
- **pleural effusion** (only when effusion = 1): side (``eff_side``), kind (``eff_kind``: layering,
  subpulmonic, loculated), volume from a blunted angle to most of a hemithorax (``eff_volume``),
  meniscus (``meniscus``), margin from sharp to a veil (``eff_soft``), loculated collection
  (``loculus``) and compressive atelectasis of the adjacent lung (``atelectasis``);
- **acquisition** (the only mechanism the scanner enters): blur, transfer curve (contrast and
  brightness; Philips lower contrast), detector noise (``acq_seed``), exposure (``exposure``), tube
  voltage (``contrast``), collimation borders and a lead side marker, sometimes over the field
  (``marker``);
- **labels**: gold = the annotated outline (the JSRT/CheXmask convention: along the heart border
  and the dome; under fluid, the lung the annotator expects, as in CF-Seg); silver = the output of
  an automatic landmark method: smooth boundary error growing at low-contrast borders
  (``silver_coef``, ``silver_amp``), stopping where fluid is dense (``silver_cut``); quality =
  1 - 0.5 (1 - Dice(silver, gold)) + noise (``quality_noise``).

Exact counterfactuals: render the same ``U`` under intervened parents. The null intervention is
pixel-identical; do(scanner) leaves anatomy, devices and both masks untouched; do(effusion)
changes the image only inside ``effusion_region`` (the potential fluid support dilated by the
blur radius) and never the gold mask. The difficulty of the phantom is calibrated against the
paper's "None" row by ``benchmarks/calibrate_phantom.py`` (``benchmarks/results/phantom.md``).

Package layout:

- :mod:`~cfcl.data.phantom.scm`: the causal model: parents (real PadChest joint), interventions,
  exogenous noise;
- :mod:`~cfcl.data.phantom.render`: the mechanisms: image and labels from noise and parents;
- :mod:`~cfcl.data.phantom.store`: the rendered splits in the data store (:mod:`cfcl.data.store`).

Every public name is re-exported here. The function :func:`render` shadows the submodule of the
same name as an attribute of this package: reach the module as ``phantom.renderer`` (or
``sys.modules["cfcl.data.phantom.render"]``), e.g. to monkeypatch a name it looks up.
"""
from __future__ import annotations

from cfcl.data.phantom import render as renderer  # noqa: F401  (the module; see the docstring)
from cfcl.data.phantom import scm, store  # noqa: F401
from cfcl.data.phantom.render import (DENSITY, DEVICES, EFFUSION_KINDS, EFFUSION_SIDES, MAX_SIZE, MIN_SIZE,
                                      RCA_SENSITIVITY, SCANNERS, blur_radius, counterfactual, render,
                                      render_with_counterfactuals)
from cfcl.data.phantom.scm import (NOISE_FIELDS, SPLIT_CODES, _bank, intervene, parent_distribution,
                                   real_joint, sample_noise, sample_parents, split_parents, take)
from cfcl.data.phantom.store import (ARRAYS, HASHED_FIELDS, NOISE_FILE, PHANTOM_VERSION, build_split,
                                     config_hash, load_noise, load_split, split_key)

__all__ = ["ARRAYS", "DENSITY", "DEVICES", "EFFUSION_KINDS", "EFFUSION_SIDES", "HASHED_FIELDS", "MAX_SIZE",
           "MIN_SIZE", "NOISE_FIELDS",
           "NOISE_FILE", "PHANTOM_VERSION", "RCA_SENSITIVITY", "SCANNERS", "SPLIT_CODES", "blur_radius", "build_split",
           "config_hash", "counterfactual", "intervene", "load_noise", "load_split", "parent_distribution",
           "real_joint", "render", "render_with_counterfactuals", "sample_noise", "sample_parents",
           "split_key", "split_parents", "take"]
