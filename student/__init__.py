"""Student: the lightweight pix2pix generator and discriminators, losses, training, evaluation.

Modules, in pipeline order: :mod:`student.config` (training config and presets),
:mod:`student.networks` (generator presets ``mobile``/``small``/``unet256``/``tiny``, the
multi-scale PatchGAN, batch-norm folding, MAC counting), :mod:`student.ops` (augmentation and
image metrics), :mod:`student.loss`, :mod:`student.data` (the pairs reader and held-out split),
:mod:`student.train` (the loop), :mod:`student.evaluate`, :mod:`student.apply`,
:mod:`student.io` (model files: ``load_student``) and :mod:`student.cli` (``toon-student``).
Importing the package imports nothing else, so ``toon-student --help`` starts fast.
"""
