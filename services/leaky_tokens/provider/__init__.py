"""The provider stubs (openai, qwen, gemini): their own service (contract only so far)."""
