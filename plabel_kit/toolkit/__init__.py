"""The toolkit: the parts a trainable WSSS method is built from, shared by the built-in plugins
and meant for third-party ones (a plugin imports ``plabel_kit`` and itself, never another
plugin). Importing this package imports nothing heavy; torch is imported by the modules
that need it, when they are imported.

==================  ===============================================================
module              what it holds
==================  ===============================================================
``runtime``         device choice, cores, process pool, rank/world, barrier, logging
``checkpoints``     atomic ``torch.save``
``backbones``       MMSegmentation ResNet presets, output stride, pretrained loading
``cam``             the CAM classifier network, its checkpoints, IRN's IR labels
``inference``       ImageNet normalisation, multi-scale and flip inference
``augment``         the seeded resize / flip / crop augmentation
``training``        the epoch loop (poly LR, resume, DDP, rank-0 checkpoints, hooks)
``crf``             dense-CRF recipes as pure functions (pydensecrf)
``affinity``        pixel affinities on a walk grid (image colour, IRN boundary)
``walk``            the sparse random walk (IRN / PSA)
==================  ===============================================================

See docs/toolkit.md for a signature and an example of each.
"""
