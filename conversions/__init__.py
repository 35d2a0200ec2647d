"""Converters from foreign checkpoint layouts to towerzoo Hub folders."""
