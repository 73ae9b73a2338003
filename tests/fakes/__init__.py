"""Stand-ins for outside services (TGI, an OpenAI-compatible completions server, llama.cpp's server),
a metagen server on loopback, and the one helper that starts a real vLLM server; imported as
tests.fakes.<module> by the tests, bench/ and contrib's tests."""
