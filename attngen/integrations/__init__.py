"""Running attngen patterns inside other libraries (Hugging Face transformers)."""
