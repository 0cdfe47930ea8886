"""The diabetes progression example (a regression): its documented shift of production traffic
(``shift.py``)."""
