"""The registered data sets, one module per family; the registry imports every module here.

To add a data set, add one module with a ``@register_dataset`` class that subclasses
``ArrayFilesDataset`` or ``InMemoryDataset`` (whole splits as uint8 arrays) or
``FolderDataset`` (images read one by one), and give it a stand-in in ``tests/test_datasets.py``.
"""
