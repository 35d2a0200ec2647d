"""Model code: one self-contained Hub folder per architecture."""
