"""Catalog analytics for merchandisers: what the catalog holds and what shoppers photograph.

``build_report`` takes plain records (a category path, attributes and an image per product, and a
log of recognitions), so a dataset, a products CSV or the catalog database can all feed it.
"""

from skulens.analytics.records import ProductRecord, Recognition
from skulens.analytics.report import build_report

__all__ = ["ProductRecord", "Recognition", "build_report"]
