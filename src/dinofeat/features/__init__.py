"""Feature maps: the pixel <-> grid geometry, the extractor that makes them, their cache and files."""
