"""The classification accuracy metric folder: `classification_accuracy.py` (the evaluate script) and `accuracy.py`
(the computation, shared with `towerzoo eval classification`)."""
