"""Datasets: listings, manifests, feature stores, work units and the local and Ray engines."""
