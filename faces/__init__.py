"""Faces: torch-free detection, landmarks, FFHQ alignment, warping, paste-back and image loading.

Used by dataset preparation (``pairs``), projection (``teacher``) and the runtime (``export``);
imports only ``common``, numpy, pillow and dlib, never torch.
"""
