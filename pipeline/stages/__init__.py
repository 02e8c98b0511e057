"""The stages one document passes through: discover, plan, split, encode, merge, store."""
