"""The VQAv2 accuracy metric folder: `vqa_accuracy.py` (the evaluate script) and `vqa_official.py` (the rules)."""
