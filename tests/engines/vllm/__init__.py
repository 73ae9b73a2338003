"""Tests of the vLLM engine (metagen_plugins.engines.vllm); the slow ones against real vLLM servers."""
