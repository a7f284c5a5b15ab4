"""Extract: the source queries, their connectorx reads, and change detection's I/O."""
