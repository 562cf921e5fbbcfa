"""The IPT body, heads/tails, training, inference and evaluation. Import submodules directly."""
