"""The provider stubs (openai, qwen, gemini): deterministic chat replies with token counts."""
