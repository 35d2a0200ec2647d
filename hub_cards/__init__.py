"""Model-card generation for towerzoo Hub folders."""
