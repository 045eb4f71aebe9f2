"""The pruning sweep: the exact engine (``engine``), its table and thresholds (``table``), the reference batches
that settle near ties (``batches``) and the CSAW tail in closed form (``closed_form``)."""
