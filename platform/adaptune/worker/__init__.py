"""What runs inside a Ray Train worker (torch): the training loop, the base model with its LoRA adapter, and
the DeepSpeed config it trains under."""
