"""Shipped prior files (data, not code); installed as the package data grndiff._priors."""
