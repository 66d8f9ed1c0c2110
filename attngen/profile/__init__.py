"""Per-head pattern search for Hugging Face causal LMs (DESIGN §7): search and eval."""
