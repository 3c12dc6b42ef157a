"""adadf's Hydra configs, shipped inside the package so an installed adadf needs no checkout.

Every command composes from here: ``run.py``/``adadf-train`` (``config.yaml``), ``adadf-eval``
(``eval.yaml``), ``adadf-predict`` (``predict.yaml``) and ``adadf-align`` (``align.yaml``); each
subdirectory is a config group (``sweep/`` holds the ready multiruns, ``-m sweep=<name>``). Hydra
reads them as ``pkg://adadf.conf`` (this ``__init__.py`` is what makes the package a Hydra config
source), so they are found from any directory, in a checkout, an editable or a wheel install.
"""

CONFIG_PATH = "pkg://adadf.conf"
