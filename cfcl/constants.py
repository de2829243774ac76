"""Domain constants used everywhere in the project (data, HVAE, classifiers, metrics, the network): plain
Python, no import; :mod:`cfcl.config` re-exports the ones the project imports from there."""
from __future__ import annotations

# Parent encodings used everywhere in the project (data, HVAE, classifiers, metrics).
SEX = ("F", "M")  # 0 = female, 1 = male
SCANNER = ("ImagingDynamicsCompanyLtd", "PhilipsMedicalSystems")  # 0, 1
EFFUSION = ("no effusion", "pleural effusion")  # 0, 1
PARENTS = ("sex", "scanner", "effusion")
# The three interventions of paper section 2.1, in the order counterfactual arrays are stored.
INTERVENTIONS = ("scanner", "effusion", "both")
INTERVENED_PARENTS = {"scanner": ("scanner",), "effusion": ("effusion",), "both": ("scanner", "effusion")}
# Label map classes (paper: background, left lung, right lung). The patient's right lung
# appears on the image's left side (radiological convention).
CLASSES = ("background", "right lung", "left lung")

DATA_SOURCES = ("phantom", "padchest")
CF_SOURCES = ("hvae", "oracle", "identity")
NEGATIVE_SCOPES = ("image", "batch")
UNET_STRIDE = 32  # smp's U-Net with a 5-stage ResNet encoder needs sides divisible by 32
UNET_DECODER_CHANNELS = (256, 128, 64, 32, 16)  # smp's U-Net decoder widths (its default, the paper's)
# The U-Net's encoders: smp's ResNets and ResNeXts (five stages, stride 32, no pre-trained weights needed).
ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x4d",
            "resnext101_32x8d", "resnext101_32x16d", "resnext101_32x32d", "resnext101_32x48d")
