"""Model definitions of the training companion."""
