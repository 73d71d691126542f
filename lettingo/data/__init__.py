"""Data layer: dataset sources in the common schema, samples (target / recent / older) and splits."""
