"""Datasets (three layouts, one loader), safe image decoding and the shared preprocessing."""
