"""The registered architecture families, one module per family; the registry imports every module here.

To add a family, add one module that calls ``register_family(Family(...))`` (see
``mgtool.archs.registry.Family`` for its fields). The tests are generated from the registry
(``tests/conftest.py``: ``TINY_SPECS`` from every family's ``tiny`` instance).
"""
