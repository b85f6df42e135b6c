"""Common: the plumbing every stage shares.

``common.files`` (atomic writes honouring the umask, sha256) and ``common.cli`` (the error base
class and the one ``main`` wrapper) are torch-free; ``common.runs`` (device choice, distributed
set-up, run directories, resume state, gradient all-reduce) imports torch. This package imports
nothing else of the project.
"""
