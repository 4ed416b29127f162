"""Feature analysis: linear CKA between layers and over training (``mgtool cka``, ``cka-time``)."""
