"""The dialogue engine: policies, the pure step, recognisers."""
