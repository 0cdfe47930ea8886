"""The Palmer penguins example (a multiclass classifier): its documented shift of production
traffic (``shift.py``)."""
