"""Batch worker: read a catalogue, embed its images, upsert them into Qdrant."""
