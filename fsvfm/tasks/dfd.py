"""The deepfake (DfD) and diffusion-face (DiFF) detection tasks: ViT classifiers fine-tuned on ``train/`` and
``val/`` folders (or split files), tested on their test-set tables. They fine-tune identically (only the
training folder differs) and differ in testing. Both take a plain ViT (full fine-tuning) or a
``vit_*_fs_adapter`` model (FS-Adapter) with the adapter flags. ``UNIFIED_TASK`` is the N-class detector
(``--task Unified`` in the DfD programs), fine-tuned the same way."""
from __future__ import annotations

from fsvfm.tasks import FinetuneTask, TestSet
from fsvfm.tasks.classifier import (
    ClassifierExperiment,
    check_trainable_flags,
    classifier_loss,
    configure_classifier,
)
from fsvfm.util.args import adapter_parser, classes_parser
from fsvfm.util.naming import DFD_VOCABULARY, UNIFIED_VOCABULARY

_FF = "deepfakes_detection/FaceForensics/32_frames"
DFD_TEST_SETS = (
    TestSet("DFD", f"{_FF}/DS_DFD_binary_cls/raw"),
    TestSet("Celeb-DF-v1", "deepfakes_detection/Celeb-DF/32_frames"),
    TestSet("Celeb-DF-v2", "deepfakes_detection/Celeb-DF-v2/32_frames"),
    TestSet("DFDC", "deepfakes_detection/DFDC/32_frames"),
    TestSet("DFDCP", "deepfakes_detection/DFDCP/32_frames"),
    TestSet("WDF", "deepfakes_detection/deepfake_in_the_wild"),
    TestSet("Celeb-DF++", "deepfakes_detection/Celeb-DF++/32_frames"),
    TestSet("FF++_c23", f"{_FF}/DS_FF++_all_cls/c23", in_default=False),  # intra-dataset, on request
)

_DIFF = "diffusion_facial_forgery_detection/DiFF"
DIFF_TEST_SETS = (
    TestSet("FF_DF", f"{_FF}/DS_FF++_each_cls/c23/DeepFakes"),
    *(TestSet(f"DiFF_{s}", f"{_DIFF}/test_subsets/{s}") for s in ("T2I", "I2I", "FS", "FE")),
    *(TestSet(f"DiFF_{s}_val", f"{_DIFF}/val_subsets/{s}", split="val") for s in ("T2I", "I2I", "FS", "FE")),
)

_CLASSIFIER_HOOKS = dict(configure_model=configure_classifier, make_loss=classifier_loss(DFD_VOCABULARY),
                         extra_parsers=(adapter_parser,),
                         experiment=ClassifierExperiment, check_args=check_trainable_flags)
DFD_TASK = FinetuneTask("DfD", test_sets=DFD_TEST_SETS, metric_mode="video", **_CLASSIFIER_HOOKS,
                        description="FS-VFM cross-dataset deepfake detection (DfD)")
DIFF_TASK = FinetuneTask("DiFF", test_sets=DIFF_TEST_SETS, metric_mode="image", **_CLASSIFIER_HOOKS,
                         description="FS-VFM unseen diffusion-face detection (DiFF)")

# An N-class detector (the released unified detector: real / deepfake / diffusion / spoof) fine-tuned and tested
# like DfD, from class folders (``--classes`` or a split file's ``# classes:`` line name them); tested on
# ``{--test_root}/test/`` or ``--test_split``. Selected with ``--task Unified`` in the DfD programs.
UNIFIED_TASK = FinetuneTask(
    "Unified", vocabulary=UNIFIED_VOCABULARY, test_sets=(TestSet("test", ""),), metric_mode="multiclass",
    **{**_CLASSIFIER_HOOKS, "make_loss": classifier_loss(UNIFIED_VOCABULARY),
       "extra_parsers": (adapter_parser, classes_parser)}, multiclass=True,
    description="FS-VFM N-class face-security detector (e.g. the unified real / deepfake / diffusion / spoof "
                "detector) from class folders")
