"""Reproducibility studies: grids of configs x seeds -> reports with honest statistics
(``statistics``: intervals over seeds, the rliable statistics across cells)."""
