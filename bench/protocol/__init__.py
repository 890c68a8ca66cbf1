"""How a student is trained and scored: the one trainer, augmentation, embeddings of a
trained student, recall@K, the evaluation of a pair set, and the proxy run the coresets read."""
