"""Production monitoring: the capture log of scored traffic and the model's view of the data."""
