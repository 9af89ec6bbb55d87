"""``longrl datagen``: LongVideo-Reason-style questions from clip captions, over any OpenAI-compatible endpoint."""
