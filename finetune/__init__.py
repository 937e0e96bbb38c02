"""Fine-tuning an open_clip image tower on the catalogue's categories (see issue: class-fine-tuned encoder)."""
