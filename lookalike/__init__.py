"""Shared building blocks of ingest, finetune and service: settings, catalogue, encoder, store."""
