"""HEAR recipe: heareval's embeddings and predictions runners over a tasks directory."""
