"""Floor 3: looking at the weights: the unfused scores / softmax and the attention plots."""
