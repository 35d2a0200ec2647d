"""The WER/CER metric folder: `wer.py` (the evaluate script) and `error_rates.py` (normalisation and scoring)."""
