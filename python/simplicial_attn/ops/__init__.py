"""Floor 2: the public functions, the torch.library ops (fakes, autograd), the input checks and dispatch."""
