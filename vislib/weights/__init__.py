"""ShapesNet's weights, package data beside this file: ``shapes_net.pt`` and the robust
``shapes_net_robust.pt``, each with its record (``.json``: the file's sha256, held-out accuracy,
training settings). ``vislib.models`` reads them with ``importlib.resources``; ``make weights``
(``python -m vislib.train``, ``--robust``) writes them. A package of its own, so that setuptools
ships the folder in the wheel (``[tool.setuptools.package-data]`` in pyproject.toml)."""
