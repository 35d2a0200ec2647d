"""The retrieval recall metric folder: `retrieval_recall.py` (the evaluate script) and `recall.py` (the computation)."""
