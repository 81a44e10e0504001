"""Input and data sets: image reading and output writing, MVTec-AD / VisA / folder splits, synthetic demo data."""
