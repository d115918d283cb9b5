"""Images to embeddings: the pretrained backbones, batched embedding, the on-disk cache."""
