"""The registered data sets, one module per family; the registry imports every module here.

To add a data set, add one module with a ``@register_dataset`` class that subclasses
``ArrayFilesDataset`` or ``InMemoryDataset`` (whole splits as uint8 arrays) or
``FolderDataset`` (images read one by one). Nothing else: ``tests/test_datasets.py`` is
generated from the registry (``dataset_names()``) and makes the new set a stand-in of its
own kind and shape, and docs/ARCHITECTURE.md lists this folder as one row.
"""
